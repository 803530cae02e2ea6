import type { V1Container, V1EnvFromSource, V1EnvVar } from "@kubernetes/client-node";
import type { BuildkiteJob } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { cpuMillis, memoryBytes } from "../api/quantity.js";
import { shapeResources } from "../api/shapes.js";
import { ROLE_REQUESTS, type Requests } from "./pod-resources.js";
import { checkSidecars, isObject } from "./sidecars.js";

/** The key Buildkite gives the pipeline shorthand `kubernetes:` in a job's BUILDKITE_PLUGINS. */
export const KUBERNETES_PLUGIN = "github.com/buildkite-plugins/kubernetes-buildkite-plugin";

/** What the operator builds for a step once its queue allowed the request. */
export interface StepPlan {
  /** The command container's image: the step's `image:`, else the queue's jobImage, else its agentImage. */
  image: string;
  /** The step's command (BUILDKITE_COMMAND of the command container; the bootstrap takes it from there only). */
  command?: string;
  /** The step's services, as native sidecars (names and images set; security and placement are the pod's). */
  sidecars: V1Container[];
  /** Extra env of the command container. */
  env: V1EnvVar[];
  envFrom: V1EnvFromSource[];
  /** The command container's own requests and limits, when the step set them (within the shape). */
  resources?: { requests: Requests; limits: Requests };
  skipCheckout: boolean;
}

/** The queue's decision on a step: the plan, or why it is refused (naming the field and the queue setting). */
export type StepDecision = { plan: StepPlan } | { refused: string };

/** Plugin keys agent-stack-k8s users write that this operator refuses, with what to do instead. */
const REFUSED_KEYS: Readonly<Record<string, string>> = {
  podSpec: "the queue builds the pod; use the step's `image:` and the plugin's sidecars, env, envFrom and resources",
  podSpecPatch:
    "the queue builds the pod; use the step's `image:` and the plugin's sidecars, env, envFrom and resources",
  podTemplate: "pod settings come from the BuildkiteQueue's spec.podTemplate",
  gitEnvFrom: "git credentials come from the BuildkiteQueue's spec.checkout, mounted into the checkout container only",
  extraVolumeMounts: "volumes come from the BuildkiteQueue's spec.podTemplate.volumes",
  metadata: "labels and annotations come from the BuildkiteQueue's spec.podTemplate",
  commandParams: "the command runs with the step's own command",
  sidecarParams: "set a sidecar's fields on the sidecar itself",
  jobActiveDeadlineSeconds: "the BuildkiteQueue's spec.maxJobDurationSeconds bounds every job",
};
const ALLOWED_KEYS = new Set(["sidecars", "env", "envFrom", "resources", "checkout"]);
/** Env names the operator sets itself; neither a queue nor a step may. */
export const RESERVED_ENV = /^(BUILDKITE_AGENT_|AWS_)/;

/**
 * Decides what a job's step may have, by its queue's rules (spec.steps): the image (any, or matching
 * allowedImages), sidecars (allowSidecars), env and envFrom from Secrets (allowedSecrets), the command's resources
 * within the shape, and checkout.skip. Anything else in the plugin is refused. Pure.
 */
export function decideStep(queue: BuildkiteQueue, job: BuildkiteJob): StepDecision {
  const step = job.spec.step ?? {};
  const where = `queue ${queue.metadata.name ?? ""}`;
  if (step.error !== undefined) return { refused: `The step's plugins could not be read: ${step.error}` };
  const image = step.image ?? queue.spec.jobImage ?? queue.spec.agentImage;
  if (step.image !== undefined) {
    const refusal = imageRefusal(queue, step.image, "The step's image:");
    if (refusal) return { refused: refusal };
  }
  const plugin = step.kubernetes ?? {};
  for (const key of Object.keys(plugin)) {
    const instead = REFUSED_KEYS[key];
    if (instead !== undefined)
      return { refused: `The kubernetes plugin's ${key} is not supported on ${where}: ${instead}.` };
    if (!ALLOWED_KEYS.has(key))
      return {
        refused: `The kubernetes plugin's ${key} is not supported on ${where}; it accepts sidecars, env, envFrom, resources and checkout.skip.`,
      };
  }
  const checkout = plugin.checkout;
  if (checkout !== undefined && (!isObject(checkout) || Object.keys(checkout).some((k) => k !== "skip")))
    return { refused: "The kubernetes plugin's checkout accepts only skip (true or false)." };
  const env = checkEnv(queue, plugin.env, "The kubernetes plugin's env");
  if ("refused" in env) return env;
  const envFrom = checkEnvFrom(queue, plugin.envFrom, "The kubernetes plugin's envFrom");
  if ("refused" in envFrom) return envFrom;
  const sidecars = checkSidecars(plugin.sidecars, {
    where,
    allowSidecars: queue.spec.steps.allowSidecars,
    image: (ref, field) => imageRefusal(queue, ref, field),
    env: (value, field) => checkEnv(queue, value, field),
    envFrom: (value, field) => checkEnvFrom(queue, value, field),
  });
  if ("refused" in sidecars) return sidecars;
  const resources = checkResources(queue, plugin.resources, sidecars.requests);
  if ("refused" in resources) return resources;
  return {
    plan: {
      image,
      ...(step.command !== undefined ? { command: step.command } : {}),
      sidecars: sidecars.containers,
      env: env.value,
      envFrom: envFrom.value,
      ...(resources.value ? { resources: resources.value } : {}),
      skipCheckout: queue.spec.checkout.skip || (isObject(checkout) && checkout.skip === true),
    },
  };
}

/** The plan of a step that asks for nothing: the queue's own image and checkout setting. */
export function defaultStep(queue: BuildkiteQueue): StepPlan {
  return {
    image: queue.spec.jobImage ?? queue.spec.agentImage,
    sidecars: [],
    env: [],
    envFrom: [],
    skipCheckout: queue.spec.checkout.skip,
  };
}

/** `*` matches any run of characters; everything else literally. */
export function imageAllowed(patterns: readonly string[] | undefined, image: string): boolean {
  if (patterns === undefined) return true;
  return patterns.some((p) =>
    new RegExp(
      `^${p
        .split("*")
        .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
        .join(".*")}$`,
    ).test(image),
  );
}

function imageRefusal(queue: BuildkiteQueue, image: unknown, field: string): string | undefined {
  if (typeof image !== "string" || image.trim() === "" || /\s/.test(image))
    return `${field} must be an image reference such as debian:bookworm, not ${JSON.stringify(image)}.`;
  const patterns = queue.spec.steps.allowedImages;
  if (imageAllowed(patterns, image)) return undefined;
  return `${field} ${image} is not allowed on queue ${queue.metadata.name ?? ""}: spec.steps.allowedImages is [${(patterns ?? []).join(", ")}]. Use a matching image or add a pattern to the queue.`;
}

type Checked<T> = { value: T } | { refused: string };

function checkEnv(queue: BuildkiteQueue, value: unknown, field: string): Checked<V1EnvVar[]> {
  if (value === undefined) return { value: [] };
  if (!Array.isArray(value)) return { refused: `${field} must be a list of {name, value} or {name, valueFrom}.` };
  const out: V1EnvVar[] = [];
  for (const item of value as unknown[]) {
    if (!isObject(item) || typeof item.name !== "string" || !/^[A-Za-z_][A-Za-z0-9_.-]*$/.test(item.name))
      return { refused: `${field} has an entry without a valid name: ${JSON.stringify(item)}.` };
    if (RESERVED_ENV.test(item.name))
      return { refused: `${field} may not set ${item.name}: BUILDKITE_AGENT_* and AWS_* are set by the operator.` };
    const extra = Object.keys(item).filter((k) => !["name", "value", "valueFrom"].includes(k));
    if (extra.length > 0) return { refused: `${field} entry ${item.name} has unsupported keys: ${extra.join(", ")}.` };
    if (item.valueFrom === undefined) {
      if (item.value !== undefined && typeof item.value !== "string")
        return { refused: `${field} entry ${item.name}: value must be a string (quote it in the pipeline).` };
      out.push({ name: item.name, value: item.value ?? "" });
      continue;
    }
    const ref = isObject(item.valueFrom) ? item.valueFrom.secretKeyRef : undefined;
    if (!isObject(item.valueFrom) || Object.keys(item.valueFrom).length !== 1 || !isObject(ref))
      return { refused: `${field} entry ${item.name}: valueFrom supports secretKeyRef only.` };
    const denied = secretRefusal(queue, ref.name, `${field} entry ${item.name}`);
    if (denied) return { refused: denied };
    if (typeof ref.key !== "string" || ref.key === "")
      return { refused: `${field} entry ${item.name}: secretKeyRef needs a key.` };
    out.push({ name: item.name, valueFrom: { secretKeyRef: { name: ref.name as string, key: ref.key } } });
  }
  return { value: out };
}

function checkEnvFrom(queue: BuildkiteQueue, value: unknown, field: string): Checked<V1EnvFromSource[]> {
  if (value === undefined) return { value: [] };
  if (!Array.isArray(value)) return { refused: `${field} must be a list of {secretRef: {name}}.` };
  const out: V1EnvFromSource[] = [];
  for (const item of value as unknown[]) {
    if (
      !isObject(item) ||
      !isObject(item.secretRef) ||
      Object.keys(item).some((k) => !["secretRef", "prefix"].includes(k))
    )
      return { refused: `${field} supports {secretRef: {name}, prefix} entries only, not ${JSON.stringify(item)}.` };
    const denied = secretRefusal(queue, item.secretRef.name, field);
    if (denied) return { refused: denied };
    if (item.prefix !== undefined && typeof item.prefix !== "string")
      return { refused: `${field}: prefix must be a string.` };
    out.push({ secretRef: { name: item.secretRef.name as string }, ...(item.prefix ? { prefix: item.prefix } : {}) });
  }
  return { value: out };
}

function secretRefusal(queue: BuildkiteQueue, name: unknown, field: string): string | undefined {
  if (typeof name !== "string" || name === "") return `${field} names no Secret.`;
  const allowed = queue.spec.steps.allowedSecrets ?? [];
  if (allowed.includes(name)) return undefined;
  return `${field} reads Secret ${name}, which queue ${queue.metadata.name ?? ""} does not allow: add it to spec.steps.allowedSecrets [${allowed.join(", ")}].`;
}

function checkResources(
  queue: BuildkiteQueue,
  value: unknown,
  sidecars: Requests,
): Checked<{ requests: Requests; limits: Requests } | undefined> {
  const shape = shapeResources(queue.spec.instanceShape);
  const total = { cpu: shape.vcpu * 1000, memory: memoryBytes(shape.memory) ?? 0 };
  const room = {
    cpu: total.cpu - ROLE_REQUESTS.agent.cpu - ROLE_REQUESTS.checkout.cpu - sidecars.cpu,
    memory: total.memory - ROLE_REQUESTS.agent.memory - ROLE_REQUESTS.checkout.memory - sidecars.memory,
  };
  const floor = ROLE_REQUESTS.commandMinimum;
  if (room.cpu < floor.cpu || room.memory < floor.memory)
    return {
      refused: `The step's sidecars request more than the ${queue.spec.instanceShape} shape leaves: the command needs at least ${floor.cpu}m CPU and ${floor.memory / 2 ** 20}Mi memory.`,
    };
  if (value === undefined) return { value: undefined };
  const field = "The kubernetes plugin's resources";
  if (!isObject(value) || Object.keys(value).some((k) => !["requests", "limits"].includes(k)))
    return { refused: `${field} takes requests and limits of cpu and memory.` };
  const read = (part: unknown, fallback: Requests): Checked<Requests> => {
    if (part === undefined) return { value: fallback };
    if (!isObject(part) || Object.keys(part).some((k) => !["cpu", "memory"].includes(k)))
      return { refused: `${field}: only cpu and memory can be set.` };
    const cpu = part.cpu === undefined ? fallback.cpu : cpuMillis(part.cpu as string);
    const memory = part.memory === undefined ? fallback.memory : memoryBytes(part.memory as string);
    if (cpu === undefined || memory === undefined)
      return { refused: `${field}: ${JSON.stringify(part)} is not a quantity such as cpu: "1500m", memory: "2Gi".` };
    return { value: { cpu, memory } };
  };
  const limits = read(value.limits, total);
  if ("refused" in limits) return limits;
  const requests = read(value.requests, {
    cpu: Math.min(room.cpu, limits.value.cpu),
    memory: Math.min(room.memory, limits.value.memory),
  });
  if ("refused" in requests) return requests;
  const fits = (r: Requests, max: Requests): boolean => r.cpu <= max.cpu && r.memory <= max.memory;
  if (!fits(limits.value, total) || !fits(requests.value, room) || !fits(requests.value, limits.value))
    return {
      refused: `${field} do not fit the ${queue.spec.instanceShape} shape (${shape.vcpu} vCPU, ${shape.memory}): requests may be at most ${room.cpu}m CPU and ${Math.floor(room.memory / 2 ** 20)}Mi, limits at most the shape, and requests at most limits.`,
    };
  return { value: { requests: requests.value, limits: limits.value } };
}
