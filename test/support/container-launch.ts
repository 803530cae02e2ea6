import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { accessSync, constants } from "node:fs";
import { mkdir } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { expand, resolveEnv, type KeySource } from "./kubelet-env.js";

/**
 * How one container of a pod runs as a local process: its argv, env and working directory as the kubelet would give
 * them, with every path under one of its volume mounts moved to the volume's local directory, and the image's
 * `buildkite-agent` replaced by the one on this machine. In env values, a path under a volume that only another
 * container of the pod mounts is moved too (so a container may see a volume it does not mount: a known difference).
 */

/** What a container's process is started with. */
export interface Launch {
  readonly container: string;
  readonly binary: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd: string;
  readonly logFile: string;
  /** Set when the spec has no command: the image's entrypoint is not known here, so nothing can run. */
  readonly unknownEntrypoint?: boolean;
}

/** What the launches of one pod share. */
export interface LaunchContext {
  readonly podDir: string;
  /** Host directories of the pod's volumes, by volume name. */
  readonly volumes: ReadonlyMap<string, string>;
  readonly keys: KeySource;
  /** The local buildkite-agent, for `buildkite-agent` and any `…/buildkite-agent` outside the pod's volumes. */
  readonly agentBinary: string;
  /** A directory holding `buildkite-agent` (linked to agentBinary), first on every container's PATH. */
  readonly binDir: string;
}

/** A container the kubelet could not configure (CreateContainerConfigError): the pod is tried again later. */
export class ContainerConfigError extends Error {
  override name = "ContainerConfigError";
  constructor(
    readonly container: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Unix socket paths are limited to 108 bytes, the terminating NUL included. */
const SOCKET_PATH_MAX = 107;
/** What the bootstrap adds under BUILDKITE_SOCKETS_PATH: `job-api/<pid>-<random>.sock`. */
const JOB_API_SOCKET = join("job-api", "4194304-2147483647.sock");

/** Builds the launch of `container` (a regular or init container of `pod`). */
export async function prepareLaunch(ctx: LaunchContext, pod: V1Pod, container: V1Container): Promise<Launch> {
  const { name } = container;
  const mountRoots = (c: V1Container): [string, string][] =>
    (c.volumeMounts ?? []).map((mount) => {
      const dir = ctx.volumes.get(mount.name);
      if (dir === undefined)
        throw new ContainerConfigError(name, `volume ${mount.name} of mount ${mount.mountPath} is not in the pod`);
      return [mount.mountPath, join(dir, mount.subPath ?? "")];
    });
  const roots = mountRoots(container);
  const ownDir = join(ctx.podDir, "w", name);
  const workingDir = container.workingDir ?? "/";
  if (workingDir !== "/" && !roots.some(([root]) => under(workingDir, root))) roots.push([workingDir, ownDir]);
  const paths = new PathMap(roots, ctx.agentBinary);
  // Env values also get the other containers' mount paths: the agent hands its env (BUILDKITE_HOOKS_PATH, …) to the
  // bootstraps at registration, so such a path must name the same directory in every container of the pod.
  const others = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].filter((c) => c !== container);
  const shared = others.flatMap(mountRoots).filter(([root]) => !roots.some(([own]) => own === root));
  const envPaths = new PathMap([...roots, ...shared], ctx.agentBinary);

  let vars: Map<string, string>;
  try {
    vars = await resolveEnv(ctx.keys, pod, container);
  } catch (err) {
    throw new ContainerConfigError(name, err instanceof Error ? err.message : String(err), { cause: err });
  }
  const isAgent = container.name === "agent" || vars.has("BUILDKITE_AGENT_ACQUIRE_JOB");
  // Without a command the image's entrypoint runs; only the agent image's (buildkite-agent) is known here.
  const command = container.command ?? (isAgent ? ["buildkite-agent"] : []);
  const argv = [...command, ...(container.args ?? [])].map((a) => paths.arg(expand(a, vars)));
  const cwd = workingDir === "/" ? ownDir : paths.text(workingDir);
  const home = join(ctx.podDir, "h", name);
  // What the image would provide; the pod's own environment goes over it, as a container's env does.
  const env: Record<string, string> = {
    PATH: [ctx.binDir, process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin"].join(delimiter),
    HOME: home,
    // An empty config keeps a machine-wide /etc/buildkite-agent/buildkite-agent.cfg out of the test.
    BUILDKITE_AGENT_CONFIG: join(ctx.podDir, "agent.cfg"),
    BUILDKITE_HOOKS_PATH: join(ctx.podDir, "hooks"),
    // No gRPC streaming attempt against a fake that speaks only the polling API.
    BUILDKITE_AGENT_PING_MODE: "poll-only",
    BUILDKITE_AGENT_NO_COLOR: "true",
  };
  const kubernetesMode =
    vars.get("BUILDKITE_KUBERNETES_EXEC") === "true" ||
    argv.includes("kubernetes-bootstrap") ||
    argv.includes("--kubernetes-exec");
  if (kubernetesMode)
    // The agent's default job context dir is /workspace: that of the pod's volume there, never this machine's.
    env.BUILDKITE_JOB_CONTEXT_DIR = paths.mapped("/workspace") ? paths.text("/workspace") : join(ownDir, "workspace");
  for (const [key, value] of vars) env[key] = envPaths.text(value);
  if (kubernetesMode) checkSocketPaths(name, env);
  for (const dir of [cwd, env.HOME ?? home, join(ctx.podDir, "hooks")]) await mkdir(dir, { recursive: true });
  const [binary = "", ...args] = argv;
  return {
    container: name,
    binary,
    args,
    env,
    cwd,
    logFile: join(ctx.podDir, `${name}.log`),
    ...(command.length === 0 ? { unknownEntrypoint: true } : {}),
  };
}

/** The agent's socket (`$BUILDKITE_JOB_CONTEXT_DIR/buildkite.sock`) and the job API's must fit a Unix socket path. */
function checkSocketPaths(container: string, env: Readonly<Record<string, string>>): void {
  const sockets = [
    join(env.BUILDKITE_JOB_CONTEXT_DIR ?? "", "buildkite.sock"),
    ...(env.BUILDKITE_SOCKETS_PATH === undefined ? [] : [join(env.BUILDKITE_SOCKETS_PATH, JOB_API_SOCKET)]),
  ];
  for (const socket of sockets)
    if (Buffer.byteLength(socket) > SOCKET_PATH_MAX)
      throw new ContainerConfigError(
        container,
        `socket path ${socket} is longer than ${SOCKET_PATH_MAX} bytes: give the pod runner a shorter workDir`,
      );
}

/** Where `binary` would be executed from, or undefined if it is not an executable file on this machine. */
export function locate(binary: string, path: string): string | undefined {
  const candidates = binary.includes("/") ? [binary] : path.split(delimiter).map((dir) => join(dir, binary));
  return candidates.find((file) => {
    try {
      accessSync(file, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * A container's mount paths and the local directories they map to. Paths are found at word boundaries (start, space,
 * quote, `=`, `:`, `,`, `;`, `(`, a redirection or a pipe), so a PATH-like list or a `sh -c` script gets its paths
 * moved too, not only a whole value.
 */
export class PathMap {
  readonly #roots: readonly (readonly [string, string])[];

  constructor(
    roots: readonly (readonly [string, string])[],
    private readonly agentBinary: string,
  ) {
    // The longest root first: a mount inside another mount wins.
    this.#roots = [...roots].sort((a, b) => b[0].length - a[0].length);
  }

  /** Whether `path` is under one of the mounts. */
  mapped(path: string): boolean {
    return this.#roots.some(([root]) => under(path, root));
  }

  /** `text` with every absolute path in it moved: under a mount to its directory, else an agent binary to ours. */
  text(text: string): string {
    return text.replace(/(^|[\s"'=:,;(<>|&])(\/(?!\/)[^\s"':,;()<>|&]*)/g, (_, before: string, path: string) => {
      const [root, dir] = this.#roots.find(([r]) => under(path, r)) ?? [];
      if (root !== undefined && dir !== undefined) return before + dir + path.slice(root.length);
      return before + (path.endsWith("/buildkite-agent") ? this.agentBinary : path);
    });
  }

  /** An argv element: as {@link text}, and a bare `buildkite-agent` is ours too. */
  arg(arg: string): string {
    return arg === "buildkite-agent" ? this.agentBinary : this.text(arg);
  }
}

export const under = (path: string, root: string): boolean =>
  path === root || path.startsWith(root.endsWith("/") ? root : `${root}/`);
