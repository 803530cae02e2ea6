import type { V1Container, V1ContainerPort, V1EnvFromSource, V1EnvVar } from "@kubernetes/client-node";
import { cpuMillis, memoryBytes } from "../api/quantity.js";
import { asResources, ROLE_REQUESTS, sum, type Requests } from "./pod-resources.js";

export type Fields = Record<string, unknown>;
export const isObject = (v: unknown): v is Fields => typeof v === "object" && v !== null && !Array.isArray(v);

/** Names the pod's own containers use. */
const RESERVED_NAMES = new Set(["agent", "checkout", "command", "copy-agent"]);
/** What a sidecar may set; security, mounts, pull policy and restart policy are the pod's. */
const SIDECAR_KEYS = new Set([
  "name",
  "image",
  "command",
  "args",
  "env",
  "envFrom",
  "ports",
  "resources",
  "workingDir",
  "readinessProbe",
  "startupProbe",
]);
const MAX_SIDECARS = 8;

export interface SidecarRules {
  /** e.g. "queue linux-small", for messages. */
  where: string;
  allowSidecars: boolean;
  image(ref: unknown, field: string): string | undefined;
  env(value: unknown, field: string): { value: V1EnvVar[] } | { refused: string };
  envFrom(value: unknown, field: string): { value: V1EnvFromSource[] } | { refused: string };
}

/**
 * Reads the plugin's `sidecars` into containers the pod runs as native sidecars, each refusal naming the field:
 * the queue's spec.steps.allowSidecars, its image rules and Secret rules, and the keys a sidecar may set.
 */
export function checkSidecars(
  value: unknown,
  rules: SidecarRules,
): { containers: V1Container[]; requests: Requests } | { refused: string } {
  if (value === undefined) return { containers: [], requests: { cpu: 0, memory: 0 } };
  if (!Array.isArray(value)) return { refused: "The kubernetes plugin's sidecars must be a list of containers." };
  if (value.length > 0 && !rules.allowSidecars)
    return {
      refused: `The step asks for sidecars, which ${rules.where} does not allow (spec.steps.allowSidecars is false).`,
    };
  if (value.length > MAX_SIDECARS) return { refused: `A step may have at most ${MAX_SIDECARS} sidecars.` };
  const containers: V1Container[] = [];
  const requests: Requests[] = [];
  for (const [i, raw] of (value as unknown[]).entries()) {
    const field = `The kubernetes plugin's sidecars[${i}]`;
    if (!isObject(raw)) return { refused: `${field} must be a container ({image, command, ...}).` };
    const extra = Object.keys(raw).filter((k) => !SIDECAR_KEYS.has(k));
    if (extra.length > 0)
      return {
        refused: `${field} sets ${extra.join(", ")}, which a sidecar may not: it runs with the pod's security settings and volumes.`,
      };
    const name = raw.name ?? `sidecar-${i}`;
    if (typeof name !== "string" || !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(name) || RESERVED_NAMES.has(name))
      return {
        refused: `${field}.name ${JSON.stringify(name)} must be a DNS label other than agent, checkout, command.`,
      };
    if (containers.some((c) => c.name === name)) return { refused: `${field}.name ${name} is used twice.` };
    const image = rules.image(raw.image, `${field}.image`);
    if (image) return { refused: image };
    for (const key of ["command", "args"] as const) {
      const list = raw[key];
      if (list !== undefined && (!Array.isArray(list) || list.some((a) => typeof a !== "string")))
        return { refused: `${field}.${key} must be a list of strings.` };
    }
    const env = rules.env(raw.env, `${field}.env`);
    if ("refused" in env) return env;
    const envFrom = rules.envFrom(raw.envFrom, `${field}.envFrom`);
    if ("refused" in envFrom) return envFrom;
    const own = sidecarRequests(raw.resources, field);
    if ("refused" in own) return own;
    for (const probe of ["readinessProbe", "startupProbe"] as const) {
      const refusal = probeRefusal(raw[probe], `${field}.${probe}`);
      if (refusal) return { refused: refusal };
    }
    if (raw.workingDir !== undefined && typeof raw.workingDir !== "string")
      return { refused: `${field}.workingDir must be a path.` };
    containers.push({
      name,
      image: raw.image as string,
      ...(raw.command ? { command: raw.command as string[] } : {}),
      ...(raw.args ? { args: raw.args as string[] } : {}),
      ...(env.value.length > 0 ? { env: env.value } : {}),
      ...(envFrom.value.length > 0 ? { envFrom: envFrom.value } : {}),
      ...(Array.isArray(raw.ports) ? { ports: raw.ports as V1ContainerPort[] } : {}),
      ...(raw.workingDir ? { workingDir: raw.workingDir } : {}),
      ...(raw.readinessProbe ? { readinessProbe: raw.readinessProbe } : {}),
      ...(raw.startupProbe ? { startupProbe: raw.startupProbe } : {}),
      resources: { requests: asResources(own.value) },
    });
    requests.push(own.value);
  }
  return { containers, requests: sum(...requests) };
}

function sidecarRequests(value: unknown, field: string): { value: Requests } | { refused: string } {
  if (value === undefined) return { value: ROLE_REQUESTS.sidecarDefault };
  const requests = isObject(value) ? value.requests : undefined;
  if (!isObject(value) || Object.keys(value).some((k) => k !== "requests") || !isObject(requests))
    return { refused: `${field}.resources takes requests (cpu, memory) only; the pod's limits bound every container.` };
  const cpu = requests.cpu === undefined ? ROLE_REQUESTS.sidecarDefault.cpu : cpuMillis(requests.cpu as string);
  const memory =
    requests.memory === undefined ? ROLE_REQUESTS.sidecarDefault.memory : memoryBytes(requests.memory as string);
  if (cpu === undefined || memory === undefined)
    return { refused: `${field}.resources.requests must be quantities such as cpu: "500m", memory: "1Gi".` };
  return { value: { cpu, memory } };
}

/** Probes may look into the sidecar itself (exec, or a port of the pod); never at another host. */
function probeRefusal(value: unknown, field: string): string | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) return `${field} must be a probe.`;
  for (const kind of ["httpGet", "tcpSocket", "grpc"]) {
    const action = value[kind];
    if (isObject(action) && action.host !== undefined)
      return `${field}.${kind}.host is not allowed: a sidecar's probe checks the pod itself.`;
  }
  return undefined;
}
