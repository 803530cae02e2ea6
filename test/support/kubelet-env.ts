import type { CoreV1Api, V1Container, V1EnvVar, V1Pod } from "@kubernetes/client-node";
import { isNotFound } from "../../operator/src/kube/field-manager.js";

/**
 * What a kubelet derives from a pod spec, for the test stand-ins that play kubelet (the pod runner and the fast
 * runner): a container's resolved env, and which pods and containers it would run.
 */

/** The pod and host IP the stand-ins report: the containers run on this machine. */
export const LOCAL_IP = "127.0.0.1";

/** The keys of a Secret (its `data`) or ConfigMap (`data` and `binaryData`), decoded; undefined if it does not exist. */
export interface KeySource {
  secret(name: string): Promise<ReadonlyMap<string, Buffer> | undefined>;
  configMap(name: string): Promise<ReadonlyMap<string, Buffer> | undefined>;
}

/** A {@link KeySource} reading the pod's namespace through the API server, each object once. */
export function apiKeySource(core: CoreV1Api, namespace: string): KeySource {
  const memo = new Map<string, Promise<ReadonlyMap<string, Buffer> | undefined>>();
  const once = (
    id: string,
    read: () => Promise<{ data?: Record<string, string>; binaryData?: Record<string, string> }>,
    text: boolean,
  ): Promise<ReadonlyMap<string, Buffer> | undefined> => {
    let value = memo.get(id);
    if (!value) {
      value = read().then(
        (object) => {
          const keys = new Map<string, Buffer>();
          // A Secret's data and a ConfigMap's binaryData are base64; a ConfigMap's data is text.
          for (const [k, v] of Object.entries(object.data ?? {})) keys.set(k, Buffer.from(v, text ? "utf8" : "base64"));
          for (const [k, v] of Object.entries(object.binaryData ?? {})) keys.set(k, Buffer.from(v, "base64"));
          return keys;
        },
        (err: unknown) => {
          if (isNotFound(err)) return undefined;
          throw err;
        },
      );
      memo.set(id, value);
    }
    return value;
  };
  return {
    secret: (name) => once(`secret/${name}`, () => core.readNamespacedSecret({ name, namespace }), false),
    configMap: (name) => once(`configmap/${name}`, () => core.readNamespacedConfigMap({ name, namespace }), true),
  };
}

/** Kubernetes' `$(VAR)` expansion: variables defined so far are replaced, `$$` escapes, anything else stays. */
export function expand(text: string, vars: ReadonlyMap<string, string>): string {
  return text.replace(/\$\$|\$\(([^)]*)\)/g, (match, name?: string) =>
    match === "$$" ? "$" : (vars.get(name ?? "") ?? match),
  );
}

/** What the kubelet accepts as an env var name from `envFrom` (others are skipped, with an event). */
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;

/**
 * The container's env as the kubelet resolves it: first every `envFrom` source in order (a later one wins, each key
 * with its prefix), then `env` in order, each value expanded against what is defined so far, or read from a Secret or
 * ConfigMap key or a downward API field. A missing object or key fails the container (CreateContainerConfigError)
 * unless marked optional.
 */
export async function resolveEnv(source: KeySource, pod: V1Pod, container: V1Container): Promise<Map<string, string>> {
  const vars = new Map<string, string>();
  for (const from of container.envFrom ?? []) {
    const ref = from.secretRef ?? from.configMapRef;
    const kind = from.secretRef ? "secret" : "configmap";
    const keys = ref && (await (from.secretRef ? source.secret(ref.name ?? "") : source.configMap(ref.name ?? "")));
    if (!ref || (!keys && ref.optional !== true)) throw new Error(`envFrom: ${kind} "${ref?.name ?? ""}" not found`);
    for (const [key, value] of keys ?? []) {
      const name = `${from.prefix ?? ""}${key}`;
      if (ENV_NAME.test(name)) vars.set(name, value.toString("utf8"));
    }
  }
  for (const env of container.env ?? []) {
    const value = env.valueFrom ? await valueFrom(source, pod, env) : expand(env.value ?? "", vars);
    if (value !== undefined) vars.set(env.name, value);
  }
  return vars;
}

async function valueFrom(source: KeySource, pod: V1Pod, env: V1EnvVar): Promise<string | undefined> {
  const { fieldRef, secretKeyRef, configMapKeyRef } = env.valueFrom ?? {};
  if (fieldRef) return fieldValue(pod, fieldRef.fieldPath);
  const ref = secretKeyRef ?? configMapKeyRef;
  if (!ref)
    throw new Error(`env ${env.name}: only value, fieldRef, secretKeyRef and configMapKeyRef are supported here`);
  const kind = secretKeyRef ? "secret" : "configmap";
  const keys = await (secretKeyRef ? source.secret(ref.name ?? "") : source.configMap(ref.name ?? ""));
  const value = keys?.get(ref.key);
  if (value === undefined && ref.optional !== true) {
    const what = keys ? `key ${ref.key} of ${kind} "${ref.name ?? ""}"` : `${kind} "${ref.name ?? ""}"`;
    throw new Error(`env ${env.name}: ${what} not found (${kind} ${pod.metadata?.namespace ?? ""}/${ref.name ?? ""})`);
  }
  return value?.toString("utf8");
}

/** The downward API's `fieldRef` paths (env, and downwardAPI volume files). */
export function fieldValue(pod: V1Pod, path: string): string {
  const meta = pod.metadata ?? {};
  const keyed = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (keyed) return (keyed[1] === "labels" ? meta.labels : meta.annotations)?.[keyed[2] ?? ""] ?? "";
  const fields: Record<string, string | undefined> = {
    "metadata.name": meta.name,
    "metadata.namespace": meta.namespace,
    "metadata.uid": meta.uid,
    "spec.nodeName": pod.spec?.nodeName,
    "spec.serviceAccountName": pod.spec?.serviceAccountName,
    "status.podIP": LOCAL_IP,
    "status.podIPs": LOCAL_IP,
    "status.hostIP": LOCAL_IP,
    "status.hostIPs": LOCAL_IP,
  };
  if (!(path in fields)) throw new Error(`fieldRef ${path} is not supported by the pod runner`);
  return fields[path] ?? "";
}

/** Bound to a node, not deleting, not finished: a kubelet would run it. */
export function runnable(pod: V1Pod): boolean {
  const phase = pod.status?.phase;
  return (
    pod.spec?.nodeName !== undefined &&
    pod.metadata?.deletionTimestamp === undefined &&
    phase !== "Succeeded" &&
    phase !== "Failed"
  );
}

/** An init container with `restartPolicy: Always`: a native sidecar (KEP-753). */
export const isSidecar = (container: V1Container): boolean => container.restartPolicy === "Always";

/**
 * The container that runs `buildkite-agent start` for a job: the one named `agent`, else the first with
 * `--acquire-job` or the env `BUILDKITE_AGENT_ACQUIRE_JOB`, else (a pod of one container) the first.
 */
export function agentContainer(pod: V1Pod): V1Container | undefined {
  const containers = pod.spec?.containers ?? [];
  return (
    containers.find((c) => c.name === "agent") ??
    containers.find((c) => acquiredJob(c) !== undefined) ??
    (containers.length === 1 ? containers[0] : undefined)
  );
}

/** The job uuid the agent container acquires: `--acquire-job <uuid>` (or `=uuid`), or a literal env value. */
export function acquiredJob(container: V1Container): string | undefined {
  const args = container.args ?? [];
  const i = args.indexOf("--acquire-job");
  const flag = i >= 0 ? args[i + 1] : args.find((a) => a.startsWith("--acquire-job="))?.slice("--acquire-job=".length);
  return flag ?? container.env?.find((e) => e.name === "BUILDKITE_AGENT_ACQUIRE_JOB")?.value;
}
