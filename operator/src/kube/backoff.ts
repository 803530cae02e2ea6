/**
 * The one exponential backoff of the operator (work queues, informer restarts, Stacks API retries, job sources,
 * credentials checks): the delay after the `failures`-th failure in a row (1 for the first) is `baseMs`, doubling each
 * time, capped at `maxMs`. Never zero, so a failing loop can never spin, and never Infinity after very many failures.
 */
export function backoffDelayMs(failures: number, baseMs: number, maxMs: number): number {
  const exponent = Math.min(Math.max(failures - 1, 0), 30);
  return Math.max(1, Math.min(maxMs, baseMs * 2 ** exponent));
}
