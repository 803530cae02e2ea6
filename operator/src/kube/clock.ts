/** A cancellable timer handle. */
export interface Timer {
  cancel(): void;
}

/**
 * Time as the operator sees it. Injected everywhere a decision depends on time or a delay, so unit tests can use a
 * fake clock (test/support/fake-clock.ts) and never sleep.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  nowMs(): number;
  now(): Date;
  /** Runs `fn` once after `ms` milliseconds. */
  setTimer(ms: number, fn: () => void): Timer;
}

/** The wall clock and Node's timers; timers do not keep the process alive. */
export const realClock: Clock = {
  nowMs: () => Date.now(),
  now: () => new Date(),
  setTimer(ms, fn) {
    const handle = setTimeout(fn, Math.max(0, ms));
    handle.unref();
    return {
      cancel: () => {
        clearTimeout(handle);
      },
    };
  },
};
