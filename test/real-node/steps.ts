import { readdirSync, readFileSync } from "node:fs";
import type { RealNode } from "../support/real-node.js";

/** The plugin whose `sidecars` (and other pod settings) a step names, as Buildkite sends it in BUILDKITE_PLUGINS. */
export const KUBERNETES_PLUGIN = "github.com/buildkite-plugins/kubernetes-buildkite-plugin";

/** The port the service image listens on (its `PORT` default, on 127.0.0.1). */
export const SERVICE_PORT = 8080;

/**
 * A job command that runs `script` with bash: the agent runs commands with `/bin/sh -ec` (dash here), and bash has
 * /dev/tcp and arrays.
 */
export function inBash(script: string): string {
  return `bash <<'BASH_SCRIPT'\n${script}\nBASH_SCRIPT`;
}

/**
 * Bash that GETs `/` from the sidecar on localhost and prints `sidecar-answer <body line>` (or `sidecar-answer
 * failed`). The image has no curl: bash's /dev/tcp makes the request. It retries for up to 30 s, since a sidecar
 * without a startup probe counts as started when its process does, before it listens.
 */
export const SIDECAR_CLIENT = `for i in $(seq 1 150); do
  if exec 3<>/dev/tcp/127.0.0.1/${SERVICE_PORT}; then break; fi 2>/dev/null
  sleep 0.2
done
printf 'GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && echo "sidecar-answer $(tail -n 1 <&3)" || echo "sidecar-answer failed"`;

/** Lines of a log (a job's in the fake, or a container's) that start with `prefix `, without it and without `\r`. */
export function reported(log: string, prefix: string): string[] {
  return log
    .split("\n")
    .map((l) => new RegExp(`${prefix} ([^\\r]*)`).exec(l)?.[1] ?? "")
    .filter((l) => l !== "" && !l.includes("$"));
}

/** Host processes of the service image's binary (`bk-test-service`), by pid: the sidecar's, while it runs. */
export function serviceProcesses(): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "bk-test-service";
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** A container of a pod as containerd's CRI reports it. */
export interface NodeContainer {
  readonly name: string;
  readonly image: string;
  /** `CONTAINER_RUNNING`, `CONTAINER_EXITED`, … */
  readonly state: string;
}

/** The containers containerd holds for a pod (every attempt, running or exited), from `crictl ps -a`. */
export async function nodeContainers(node: RealNode, namespace: string, pod: string): Promise<NodeContainer[]> {
  const out = JSON.parse(
    await node.crictl(["ps", "-a", "-o", "json", "--label", `io.kubernetes.pod.namespace=${namespace}`]),
  ) as {
    containers?: { state?: string; image?: { image?: string }; labels?: Record<string, string> }[];
  };
  return (out.containers ?? [])
    .filter((c) => c.labels?.["io.kubernetes.pod.name"] === pod)
    .map((c) => ({
      name: c.labels?.["io.kubernetes.container.name"] ?? "",
      image: c.image?.image ?? "",
      state: c.state ?? "",
    }));
}
