import { ConfigError } from "./config/config.js";

/**
 * Fault points: named places where a test can make the operator process die at once (SIGKILL, no clean-up), to prove
 * that a crash at exactly that moment loses no job and doubles no slot. They are armed only by the environment
 * variable `BK_OPERATOR_FAULTS`, read once at start (`name` or `name@N`: die the Nth time the point is reached,
 * default the first; several separated by commas). Unset, as in every deployment, {@link faultPoint} does nothing.
 */

/** Every fault point, and the moment it stands for. */
export const FAULT_POINTS = {
  /** BuildkiteJobs of a poll created, their jobs not yet reserved in Buildkite. */
  "after-create-jobs": "after the BuildkiteJobs of a poll are created, before their jobs are reserved",
  /** Jobs reserved in Buildkite, nothing after that done (job tokens, notifications). */
  "after-reserve": "after jobs are reserved in Buildkite, before their job tokens are issued",
  /** A job's pod created, the job's status not yet written. */
  "after-pod-create": "after a job's pod is created, before the job's status records it",
  /** A leader renewed its lease and has not acted on it yet. */
  "after-lease-renew": "after the leader renewed its lease",
} as const;

export type FaultPoint = keyof typeof FAULT_POINTS;

const armed = new Map<string, number>();
let onFault: (point: FaultPoint) => void = () => {
  process.kill(process.pid, "SIGKILL");
};

/** Arms the points named in `spec` (the variable's syntax); `fault` replaces the kill (unit tests of this module). */
export function armFaults(spec: string | undefined, fault?: (point: FaultPoint) => void): void {
  armed.clear();
  if (fault) onFault = fault;
  for (const part of (spec ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")) {
    const [name = "", nth = "1"] = part.split("@");
    if (!(name in FAULT_POINTS))
      throw new ConfigError(
        `BK_OPERATOR_FAULTS names unknown fault point "${name}"; known: ${Object.keys(FAULT_POINTS).join(", ")}`,
      );
    const n = Number(nth);
    if (!Number.isInteger(n) || n < 1)
      throw new ConfigError(`BK_OPERATOR_FAULTS: "${part}" needs a whole number ≥ 1 after @`);
    armed.set(name, n);
  }
}

/** Dies here when a test armed this point and it has been reached as often as asked; otherwise nothing. */
export function faultPoint(point: FaultPoint): void {
  const left = armed.get(point);
  if (left === undefined) return;
  if (left > 1) {
    armed.set(point, left - 1);
    return;
  }
  armed.delete(point);
  onFault(point);
}
