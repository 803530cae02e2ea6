import type { V1Pod } from "@kubernetes/client-node";
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

/**
 * The substitution the token search reads everything through: letters rotated by 13 and digits by 5, so it is its own
 * inverse. The job is given `rot(token)`: it never holds the token, and its own text (in BUILDKITE_COMMAND of every
 * process's environment, and in the searching processes' memory) turns into the token itself when read through rot,
 * which is not what it looks for.
 */
export function rot(text: string): string {
  return text.replace(/[A-Za-z0-9]/g, (ch) => {
    const code = ch.charCodeAt(0);
    if (ch >= "0" && ch <= "9") return String.fromCharCode(48 + ((code - 48 + 5) % 10));
    const base = ch >= "a" ? 97 : 65;
    return String.fromCharCode(base + ((code - base + 13) % 26));
  });
}

/** A file the token search writes the control marker to, and must find it in. */
export const SEARCH_CONTROL_FILE = "/workspace/bk-search-control.txt";

/**
 * Bash that searches everything job code can reach for a token (the given one, and any job acquisition token) and, as a positive control, for a marker it plants
 * itself: every process's environment and command line, the writable memory of every process (/proc/PID/maps, read
 * with dd from /proc/PID/mem), and every file under /workspace, /buildkite and /tmp. `encodedToken` and
 * `encodedControl` are {@link rot} of the values, so neither value appears in the job. The controls: a process with
 * the marker in its environment, a process holding it only in a shell variable, and {@link SEARCH_CONTROL_FILE}.
 *
 * Prints, with counts and never the values: `search controls env=<pid> mem=<pid>`, `search me uid=<uid>`, for each
 * process `search env <pid> <comm> uid=<uid> token=<n> control=<n>` and `search mem <pid> <comm> uid=<uid>
 * bytes=<n> token=<n> control=<n>[ gone]`, `search file <path> token=<n> control=<n>` for files with a hit, and
 * `search files <count>`.
 */
export function tokenSearch(encodedToken: string, encodedControl: string): string {
  return `set -u
rot() { tr 'A-Za-z0-9' 'N-ZA-Mn-za-m5-90-4'; }
token='${encodedToken}'
control='${encodedControl}'
# Any job acquisition token counts as a token too (jat is its prefix, encoded): a Required queue's agent holds one.
jat='${rot("bkjat_")}'
count() { grep -a -o -F -e "$token" -e "$control" -e "$jat" | awk -v t="$token" -v j="$jat" '{ if ($0 == t) n++; else if ($0 == j) n++; else c++ } END { printf "token=%d control=%d", n, c }'; }
tmp=$(mktemp -d)
(export BK_SEARCH_CONTROL="$(printf %s "$control" | rot)"; exec sleep 600) &
env_pid=$!
bash -c 'held=$(printf %s "$1" | tr "A-Za-z0-9" "N-ZA-Mn-za-m5-90-4"); : >"$2"; sleep 600; echo "\${#held}"' control "$control" "$tmp/held" &
mem_pid=$!
printf '%s\\n' "$control" | rot >${SEARCH_CONTROL_FILE}
for i in $(seq 1 100); do
  [ -e "$tmp/held" ] && [ "$(cat /proc/$env_pid/comm)" = sleep ] && break
  sleep 0.1
done
echo "search controls env=$env_pid mem=$mem_pid"
echo "search me uid=$(id -u)"
for pid in $(ls /proc | grep -E '^[0-9]+$' | sort -n); do
  comm=$(cat /proc/$pid/comm 2>/dev/null) || continue
  comm=\${comm// /_}
  uid=$(awk '/^Uid:/ {print $2}' /proc/$pid/status 2>/dev/null)
  echo "search env $pid $comm uid=$uid $( { tr '\\0' '\\n' </proc/$pid/environ; tr '\\0' '\\n' </proc/$pid/cmdline; } 2>/dev/null | rot | count)"
  : >"$tmp/dd"
  found=$(while read -r range perms _; do
      case $perms in rw*) ;; *) continue ;; esac
      start=$((16#\${range%-*})); end=$((16#\${range#*-}))
      dd if=/proc/$pid/mem bs=1M iflag=skip_bytes,count_bytes skip=$start count=$((end - start)) 2>>"$tmp/dd"
    done 2>/dev/null </proc/$pid/maps | rot | count)
  bytes=$(awk '/bytes/ {s += $1} END {print s + 0}' "$tmp/dd")
  gone=""; [ -d /proc/$pid ] || gone=" gone"
  echo "search mem $pid $comm uid=$uid bytes=$bytes $found$gone"
done
files=0
while IFS= read -r -d '' f; do
  files=$((files + 1))
  found=$(rot <"$f" 2>/dev/null | count)
  [ "$found" = "token=0 control=0" ] || echo "search file $f $found"
done < <(find /workspace /buildkite /tmp -xdev -type f -readable -print0 2>/dev/null)
echo "search files $files"
kill $env_pid $mem_pid
rm -rf "$tmp"`;
}

/**
 * A job pod in a few lines, for failure messages (the pod is gone by the time a test looks at the outcome): each
 * container's role, image, command, env names (values can be secrets) and mounts.
 */
export function describePod(pod: V1Pod): string {
  const spec = pod.spec;
  const containers = [
    ...(spec?.initContainers ?? []).map((c) => ({ c, kind: c.restartPolicy === "Always" ? "sidecar" : "init" })),
    ...(spec?.containers ?? []).map((c) => ({ c, kind: "container" })),
  ];
  return [
    `pod ${pod.metadata?.name ?? "?"} (uid ${String(spec?.securityContext?.runAsUser ?? "image's")}):`,
    ...containers.map(({ c, kind }) =>
      [
        `  ${kind} ${c.name}: ${c.image ?? "?"} ${JSON.stringify([...(c.command ?? []), ...(c.args ?? [])])}`,
        `    env ${(c.env ?? []).map((e) => e.name).join(" ")}`,
        `    mounts ${(c.volumeMounts ?? []).map((m) => `${m.mountPath}${m.readOnly ? " (ro)" : ""}`).join(", ")}`,
      ].join("\n"),
    ),
  ].join("\n");
}
