/**
 * Bash for jobs that probe addresses (the agent image has no curl): `probe <name> <address> <port> [<request>]` opens
 * a TCP connection with bash's /dev/tcp, sends the request (printf format; default `GET / HTTP/1.0`), and prints
 * `probe <name> rc=<exit> <last line of the answer, or the error>`. Five seconds at most per probe.
 */
export const PROBE_FUNCTION = `probe() {
  if r=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "$3" >&3 && tail -n 1 <&3' _ "$2" "$3" "\${4:-GET / HTTP/1.0\\r\\n\\r\\n}" 2>&1); then rc=0; else rc=$?; fi
  echo "probe $1 rc=$rc $(echo "$r" | tr '\\n' ' ')"
}
`;

/**
 * The probe lines of a job's log: name → `rc=<exit> <answer>`. Lines holding `$` are the command's own text (the
 * agent prints it), not a result.
 */
export function probeResults(log: string): Map<string, string> {
  const lines = log
    .split("\n")
    .map((l) => /probe (\S+) (rc=[^\r]*)/.exec(l))
    .filter((m) => m !== null && !(m[2] ?? "").includes("$"));
  return new Map(lines.map((m) => [m?.[1] ?? "", (m?.[2] ?? "").trim()]));
}
