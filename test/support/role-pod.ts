import type { V1Container, V1EnvFromSource, V1EnvVar, V1Pod, V1Volume, V1VolumeMount } from "@kubernetes/client-node";

/**
 * A fixture builder for the job pod of docs/pod-layout.md, written by hand from the document (not by the operator's
 * pod builder): copy-agent, native sidecars, agent, checkout and command, each with one role, on the workspace and
 * buildkite-bin volumes. Tests use it to check that the real agent runs such a pod, whatever the operator builds.
 */

/** What a test says about the pod; the rest follows the document. */
export interface RolePodOptions {
  readonly name: string;
  /** The Buildkite job the agent acquires. */
  readonly uuid: string;
  readonly queue: string;
  readonly endpoint: string;
  /** The Secret (key `token`) with the agent token. */
  readonly tokenSecret: string;
  /** The step's command, which `command` runs (`BUILDKITE_COMMAND`: kubernetes-bootstrap takes it from its own env). */
  readonly command?: string;
  /** Include the `checkout` container (default true). */
  readonly checkout?: boolean;
  /** Native sidecars: each an init container with restartPolicy Always, named `sidecar-<i>` unless named. */
  readonly sidecars?: readonly SidecarOptions[];
  /** A hooks ConfigMap, mounted read-only at /buildkite/hooks in checkout and command (mode 0555). */
  readonly hooksConfigMap?: string;
  /** Extra env for `agent`, after the document's. */
  readonly agentEnv?: readonly V1EnvVar[];
  /** Extra env and envFrom for `command` (the queue's and the step's env go there). */
  readonly commandEnv?: readonly V1EnvVar[];
  readonly commandEnvFrom?: readonly V1EnvFromSource[];
  readonly annotations?: Readonly<Record<string, string>>;
}

/** A step's sidecar, as the kubernetes plugin's `sidecars` names it. */
export interface SidecarOptions {
  readonly name?: string;
  readonly image: string;
  readonly command?: readonly string[];
  readonly args?: readonly string[];
}

const AGENT_IMAGE = "buildkite/agent:3.138.1";
const WORKSPACE = "/workspace";
const BIN = "/buildkite/bin";

export function rolePod(options: RolePodOptions): V1Pod {
  const withCheckout = options.checkout ?? true;
  const volumes: V1Volume[] = [
    { name: "workspace", emptyDir: { sizeLimit: "10Gi" } },
    { name: "buildkite-bin", emptyDir: { sizeLimit: "64Mi" } },
  ];
  const workspace: V1VolumeMount = { name: "workspace", mountPath: WORKSPACE };
  const bin: V1VolumeMount = { name: "buildkite-bin", mountPath: BIN, readOnly: true };
  const jobMounts = [workspace, bin];
  if (options.hooksConfigMap !== undefined) {
    volumes.push({ name: "hooks", configMap: { name: options.hooksConfigMap, defaultMode: 0o555 } });
    jobMounts.push({ name: "hooks", mountPath: "/buildkite/hooks", readOnly: true });
  }
  const small = { requests: { cpu: "100m", memory: "128Mi" } };

  const agentEnv: V1EnvVar[] = [
    { name: "BUILDKITE_AGENT_TOKEN", valueFrom: { secretKeyRef: { name: options.tokenSecret, key: "token" } } },
    { name: "BUILDKITE_AGENT_ACQUIRE_JOB", value: options.uuid },
    { name: "BUILDKITE_KUBERNETES_EXEC", value: "true" },
    { name: "BUILDKITE_CONTAINER_COUNT", value: withCheckout ? "2" : "1" },
    { name: "BUILDKITE_AGENT_ENDPOINT", value: options.endpoint },
    { name: "BUILDKITE_AGENT_TAGS", value: `queue=${options.queue}` },
    { name: "BUILDKITE_AGENT_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
    { name: "BUILDKITE_BUILD_PATH", value: `${WORKSPACE}/build` },
    { name: "BUILDKITE_PLUGINS_PATH", value: `${WORKSPACE}/plugins` },
    { name: "BUILDKITE_SHELL", value: "/bin/sh -ec" },
    { name: "BUILDKITE_JOB_CONTEXT_DIR", value: WORKSPACE },
    ...(options.hooksConfigMap === undefined ? [] : [{ name: "BUILDKITE_HOOKS_PATH", value: "/buildkite/hooks" }]),
    ...(options.agentEnv ?? []),
  ];
  const bootstrap = (name: string, id: number, phases: string): V1Container => ({
    name,
    image: AGENT_IMAGE,
    command: [`${BIN}/buildkite-agent`, "kubernetes-bootstrap"],
    env: [
      { name: "BUILDKITE_CONTAINER_ID", value: String(id) },
      { name: "BUILDKITE_BOOTSTRAP_PHASES", value: phases },
      { name: "BUILDKITE_JOB_CONTEXT_DIR", value: WORKSPACE },
      { name: "BUILDKITE_SOCKETS_PATH", value: `${WORKSPACE}/sockets/${name}` },
      { name: "HOME", value: WORKSPACE },
    ],
    volumeMounts: jobMounts,
    resources: small,
  });
  const command = bootstrap("command", withCheckout ? 1 : 0, "plugin,command");
  command.image = "alpine:3.22";
  command.env?.push(
    ...(options.command === undefined ? [] : [{ name: "BUILDKITE_COMMAND", value: options.command }]),
    ...(options.commandEnv ?? []),
  );
  if (options.commandEnvFrom) command.envFrom = [...options.commandEnvFrom];
  command.resources = { requests: { cpu: "1700m", memory: "3712Mi" }, limits: { cpu: "2", memory: "4Gi" } };

  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: options.name, ...(options.annotations ? { annotations: { ...options.annotations } } : {}) },
    spec: {
      restartPolicy: "Never",
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 60,
      resources: { requests: { cpu: "2", memory: "4Gi" }, limits: { cpu: "2", memory: "4Gi" } },
      initContainers: [
        {
          name: "copy-agent",
          image: AGENT_IMAGE,
          command: ["cp", "/usr/local/bin/buildkite-agent", `${BIN}/buildkite-agent`],
          volumeMounts: [{ name: "buildkite-bin", mountPath: BIN }],
          resources: { requests: { cpu: "100m", memory: "64Mi" } },
        },
        ...(options.sidecars ?? []).map((c, i): V1Container => ({
          name: c.name ?? `sidecar-${String(i)}`,
          image: c.image,
          ...(c.command ? { command: [...c.command] } : {}),
          ...(c.args ? { args: [...c.args] } : {}),
          restartPolicy: "Always",
          volumeMounts: [workspace],
        })),
      ],
      containers: [
        {
          name: "agent",
          image: AGENT_IMAGE,
          command: ["buildkite-agent", "start"],
          env: agentEnv,
          volumeMounts: [workspace],
          resources: small,
        },
        ...(withCheckout ? [bootstrap("checkout", 0, "plugin,checkout")] : []),
        command,
      ],
      volumes,
    },
  };
}
