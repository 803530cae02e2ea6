import { CoreV1Api, KubeConfig, type V1Secret } from "@kubernetes/client-node";
import { accessSync, constants, readFileSync, realpathSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { stringify } from "yaml";
import { hackBinary, repoRoot } from "../../test/support/binaries.js";
import { ComponentError, ManagedProcess } from "../../test/support/managed-process.js";

/**
 * Buildkite's own agent-stack-k8s controller as a benchmark peer: the binary `hack/build-binaries.sh --with-peers`
 * builds from the pin in hack/versions.env, run as a local process against the test cluster and the fake Buildkite.
 * It registers a `kubernetes` stack, polls and reserves its queue's jobs, and turns each into a batch/v1 Job
 * (`buildkite-<uuid>`) whose pod's `agent` container carries BUILDKITE_AGENT_ACQUIRE_JOB=<uuid>, the agent token
 * (secretKeyRef to the token Secret) and BUILDKITE_AGENT_ENDPOINT=<agentEndpoint>; someone else (KWOK plus the fast
 * runner) runs those pods.
 */

/** The pins of hack/versions.env, read once. */
function pin(name: string): string {
  const text = readFileSync(join(repoRoot, "hack", "versions.env"), "utf8");
  const value = new RegExp(`^${name}=(\\S+)$`, "m").exec(text)?.[1];
  if (value === undefined) throw new Error(`hack/versions.env has no ${name}`);
  return value;
}

/** The pinned module version (a pseudo-version of github.com/buildkite/agent-stack-k8s/v2); the build cache key. */
export const PEER_VERSION: string = pin("AGENT_STACK_K8S_VERSION");
/** The release tag at that commit, which the binary reports (`agent-stack-k8s version`). */
export const PEER_RELEASE: string = pin("AGENT_STACK_K8S_RELEASE");

const BUILD_HINT =
  "Build it with `bash hack/build-binaries.sh --with-peers` (or `bash hack/build-binaries.sh agent-stack-k8s`).";

/** The agent-stack-k8s binary if it was built for the current pin (hack/bin/agent-stack-k8s links to the versioned build). */
export function peerBinary(): string | undefined {
  const link = hackBinary("agent-stack-k8s");
  try {
    if (basename(realpathSync(link)) !== `agent-stack-k8s-${PEER_VERSION}`) return undefined;
    accessSync(link, constants.X_OK);
    return link;
  } catch {
    return undefined;
  }
}

/** A stack as the fake's `GET /_fake/stacks` lists it. */
export interface PeerStack {
  readonly key: string;
  readonly type: string;
  readonly state: string;
  readonly cluster_queue_key: string;
}

export interface PeerOptions {
  /** Kubeconfig of the cluster the controller creates its Jobs in (its KUBECONFIG). */
  kubeconfigPath: string;
  /** Where its token Secret goes and where it creates and watches Jobs and pods. */
  namespace: string;
  /** The fake's agent API base (`FakeBuildkite.agentEndpoint`, …/v3): the Stacks API base and the pods' agent endpoint. */
  agentEndpoint: string;
  /** A cluster agent token the fake accepts (`FakeBuildkite.agentToken`). */
  agentToken: string;
  /** The queue to serve. */
  queue: string;
  /** `max-in-flight`: unfinished Kubernetes Jobs at once; 0 = unlimited. */
  maxInFlight: number;
  /** The controller's output goes here (appended); its config file is written beside it. */
  logFile: string;
  /** `id`: stack key and `buildkite.com/controller-id` label (default `ask-<queue>`, made a valid label value). */
  id?: string;
  /** More keys of agent-stack-k8s's config file, e.g. `{"job-ttl": "30s", "k8s-client-rate-limiter-qps": 50}`; they win. */
  extraConfig?: Record<string, unknown>;
  /** Lists the fake's stacks (default: `GET <agentEndpoint without /v3>/_fake/stacks`). */
  stacks?: () => Promise<readonly PeerStack[]>;
  /** How long to wait for the stack registration (default 30 s). */
  readyTimeoutMs?: number;
}

/** A running agent-stack-k8s controller. */
export interface Peer {
  /** SIGTERM (it deregisters its stack, best effort, 5 s), then SIGKILL after 10 s; closes its log. */
  stop(): Promise<void>;
  readonly pid: number;
  /** Its stack key (= `id`). */
  readonly stackKey: string;
  /** The config file it runs with. */
  readonly configFile: string;
  /** The Secret holding the agent token (key BUILDKITE_AGENT_TOKEN), which its pods also reference. */
  readonly tokenSecret: string;
}

/** Any image reference: KWOK pulls nothing. It must still parse, or the controller fails the job. */
const KWOK_IMAGE = "ghcr.io/buildkite/agent:3-kwok-bench";
/** agent-stack-k8s reads the token from this key of its Secret, and mounts the same key into each pod's agent container. */
const TOKEN_KEY = "BUILDKITE_AGENT_TOKEN";

/** A Kubernetes label value (≤ 63, alphanumeric ends, `-_.` inside) that is also a stack key (`[A-Za-z0-9_-]{1,80}`). */
export function peerId(queue: string): string {
  const id = `ask-${queue}`
    .replace(/[^A-Za-z0-9_-]/g, "-")
    .slice(0, 63)
    .replace(/[^A-Za-z0-9]+$/, "");
  return id;
}

/** agent-stack-k8s's config file (YAML; unknown keys are fatal to it). */
export function peerConfig(opts: PeerOptions, id: string, tokenSecret: string): Record<string, unknown> {
  return {
    id,
    namespace: opts.namespace,
    "agent-token-secret": tokenSecret,
    queue: opts.queue,
    "max-in-flight": opts.maxInFlight,
    // The documented floor; the default too, stated so a default change upstream cannot skew a comparison.
    "poll-interval": "1s",
    image: KWOK_IMAGE,
    // The Stacks API base for the controller, and BUILDKITE_AGENT_ENDPOINT for the agent in each pod.
    "agent-config": { endpoint: opts.agentEndpoint },
    // The Helm chart's default; the binary's own is "server default".
    "reservation-expiry-seconds": 900,
    "prometheus-port": 0,
    "log-format": "logfmt",
    "no-color": true,
    // The fake speaks only the polling agent API (reference §6.7): a real agent in the pod must not try streaming.
    "pod-spec-patch": {
      containers: [{ name: "agent", env: [{ name: "BUILDKITE_AGENT_PING_MODE", value: "poll-only" }] }],
    },
    ...opts.extraConfig,
  };
}

async function putSecret(core: CoreV1Api, namespace: string, name: string, token: string): Promise<void> {
  const body: V1Secret = {
    metadata: { name, labels: { "app.kubernetes.io/name": "agent-stack-k8s" } },
    stringData: { [TOKEN_KEY]: token },
  };
  try {
    await core.createNamespacedSecret({ namespace, body });
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
    await core.replaceNamespacedSecret({ name, namespace, body });
  }
}

/** The fake's control API base from its agent endpoint (`http://host:port/v3` → `http://host:port`). */
function fakeStacks(agentEndpoint: string): () => Promise<readonly PeerStack[]> {
  const base = agentEndpoint.replace(/\/+$/, "");
  if (!base.endsWith("/v3"))
    throw new Error(
      `agentEndpoint ${agentEndpoint} does not end in /v3; pass options.stacks to find the fake's stacks`,
    );
  const url = `${base.slice(0, -"/v3".length)}/_fake/stacks`;
  return async () => {
    const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
    return (await res.json()) as PeerStack[];
  };
}

/**
 * Creates the token Secret, writes the config file, starts the controller (under `setpriv --pdeathsig SIGKILL`, so
 * it never outlives this process) and resolves once its `kubernetes` stack for the queue is registered and connected
 * in the fake. Fails with its last log lines if it exits first or does not register within the timeout.
 */
export async function startAgentStackK8s(opts: PeerOptions): Promise<Peer> {
  const binary = peerBinary();
  if (binary === undefined) {
    throw new ComponentError(`agent-stack-k8s ${PEER_RELEASE} (${PEER_VERSION}) is not built. ${BUILD_HINT}`);
  }
  const id = opts.id ?? peerId(opts.queue);
  const tokenSecret = `${id}-agent-token`.slice(0, 253);
  const kc = new KubeConfig();
  kc.loadFromFile(opts.kubeconfigPath);
  await putSecret(kc.makeApiClient(CoreV1Api), opts.namespace, tokenSecret, opts.agentToken);

  await mkdir(dirname(opts.logFile), { recursive: true });
  const configFile = join(dirname(opts.logFile), `${id}.config.yaml`);
  await writeFile(configFile, stringify(peerConfig(opts, id, tokenSecret)));

  const proc = ManagedProcess.start({
    name: `agent-stack-k8s (${id})`,
    binary,
    args: ["--config", configFile],
    logFile: opts.logFile,
    // A clean environment: every config key is also read from an env var of its own name (NAMESPACE, QUEUE, IMAGE, …).
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      KUBECONFIG: opts.kubeconfigPath,
    },
    missingHint: BUILD_HINT,
  });
  const pid = proc.pid;
  if (pid === undefined) throw proc.failure("did not start");
  const stacks = opts.stacks ?? fakeStacks(opts.agentEndpoint);
  try {
    await proc.waitReady(
      async () => (await stacks()).some((s) => s.key === id && s.type === "kubernetes" && s.state === "connected"),
      opts.readyTimeoutMs ?? 30_000,
      `It should register the kubernetes stack ${id} at ${opts.agentEndpoint}/stacks/register.`,
    );
  } catch (err) {
    await proc.stop(1_000);
    throw err;
  }
  return { stop: () => proc.stop(10_000), pid, stackKey: id, configFile, tokenSecret };
}
