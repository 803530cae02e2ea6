/** Options for {@link eventually}. */
export interface EventuallyOptions {
  /** Give up after this many milliseconds (default 30 s). */
  timeoutMs?: number;
  /** Wait this long between attempts (default 100 ms). */
  intervalMs?: number;
  /** Names what is being waited for, for the error message. */
  what?: string;
}

/**
 * Retries `check` until it returns without throwing (its value is returned) or the timeout passes, in which case the
 * last error is rethrown with what was awaited. Tests wait for outcomes with this, never with a bare sleep.
 */
export async function eventually<T>(check: () => T | Promise<T>, options: EventuallyOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const intervalMs = options.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() >= deadline) {
        const what = options.what ? `${options.what}: ` : "";
        const detail = err instanceof Error ? err.message : String(err);
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`, { cause: err });
      }
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
