import type { Clock } from "./clock.js";

/** What this process did to an object that its cache may not show yet. */
export type Expected =
  /** It created the object: expected to appear in the cache. */
  | { kind: "created" }
  /** It handed the object a slot (an index its owner has a limited number of): expected recorded on it. */
  | { kind: "assigned"; slot: number };

interface Entry {
  expected: Expected;
  atMs: number;
}

/**
 * How long an expectation is kept at most: client-go's `ExpectationsTimeout`. Long enough to outlast any lag of a
 * healthy watch; a stalled one is restarted by its supervisor well within it.
 */
export const EXPECTATION_TTL_MS = 5 * 60_000;

/**
 * The one record of what this process created or assigned but has not seen in its caches yet, per owner (a queue),
 * after client-go's `ControllerExpectations`. Decisions derived from the caches count these too, so that the caches'
 * lag never makes room twice: a BuildkiteJob just created still takes room in its queue, a slot just handed out is
 * still taken. Entries are keyed by the object's `namespace/name`; each is dropped once the caches show it (the owner's
 * reader says so in {@link pending}), when forgotten, or after {@link EXPECTATION_TTL_MS}. Unlike client-go's counters,
 * every entry names its object, so a lost watch event can only make an entry live until its TTL, never make it leak.
 */
export class Expectations {
  private readonly owners = new Map<string, Map<string, Entry>>();
  /** The owner of each key, so an object can be forgotten by its key alone (once deleted, its owner is unknown). */
  private readonly ownerOf = new Map<string, string>();
  /** BuildkiteJobs this process created and has not changed since, by key: their uids (see {@link jobCreated}). */
  private readonly fresh = new Map<string, string>();

  constructor(
    private readonly clock: Clock,
    private readonly ttlMs = EXPECTATION_TTL_MS,
  ) {}

  /**
   * Records that this process created `key` for `owner`, unless something is expected of it already: the watch can
   * deliver the new object, and a controller hand it a slot, before the create's own answer arrives, and that slot
   * must not be forgotten.
   */
  created(owner: string, key: string): void {
    if (this.owners.get(owner)?.has(key) === true) return;
    this.set(owner, key, { kind: "created" });
  }

  /** Records that this process handed `key` slot `slot` of `owner`. Replaces what was expected of `key` before. */
  assigned(owner: string, key: string, slot: number): void {
    this.set(owner, key, { kind: "assigned", slot });
  }

  /** Drops what was expected of `key` (a slot handed back, an object deleted). */
  forget(key: string): void {
    const owner = this.ownerOf.get(key);
    if (owner === undefined) return;
    this.ownerOf.delete(key);
    const entries = this.owners.get(owner);
    entries?.delete(key);
    if (entries?.size === 0) this.owners.delete(owner);
  }

  /** Whether something is expected of `key` for `owner` (not yet seen, forgotten, or expired). */
  has(owner: string, key: string): boolean {
    const entry = this.owners.get(owner)?.get(key);
    return entry !== undefined && !this.expired(entry);
  }

  /**
   * What is still expected for `owner`, by key: drops first each entry that `seen` says the caches show, and each
   * older than the TTL.
   */
  pending(owner: string, seen: (key: string, expected: Expected) => boolean): ReadonlyMap<string, Expected> {
    const entries = this.owners.get(owner);
    const result = new Map<string, Expected>();
    if (!entries) return result;
    for (const [key, entry] of entries) {
      if (this.expired(entry) || seen(key, entry.expected)) this.forget(key);
      else result.set(key, entry.expected);
    }
    return result;
  }

  /**
   * Records that this process created the BuildkiteJob `key` (with `uid`). Until this process marks it (stop, a
   * Buildkite state) or makes its pod, nothing that forbids or replaces its pod is written to it (bar by a person), so
   * its cached copy is as good as a live read for creating the pod (see {@link unchangedSinceCreated}). Its own status
   * writes before the pod (waiting for a slot) and the release of its reservation do not count: the pod's create
   * writes over them, and a cache behind the release only delays the pod.
   */
  jobCreated(key: string, uid: string): void {
    this.fresh.set(key, uid);
  }

  /**
   * Whether the job `key` with `uid` was created by this process, which has neither written it since nor made its pod.
   * A job created elsewhere (by a person, or before a restart or a change of leader) may be newer than its cached copy.
   */
  unchangedSinceCreated(key: string, uid: string | undefined): boolean {
    return uid !== undefined && this.fresh.get(key) === uid;
  }

  /** This process wrote the job `key`, made its pod, or saw it go: its cached copy may lag from now on. */
  jobChanged(key: string): void {
    this.fresh.delete(key);
  }

  private set(owner: string, key: string, expected: Expected): void {
    const previous = this.ownerOf.get(key);
    if (previous !== undefined && previous !== owner) this.forget(key);
    let entries = this.owners.get(owner);
    if (!entries) this.owners.set(owner, (entries = new Map<string, Entry>()));
    entries.set(key, { expected, atMs: this.clock.nowMs() });
    this.ownerOf.set(key, owner);
  }

  private expired(entry: Entry): boolean {
    return this.clock.nowMs() - entry.atMs > this.ttlMs;
  }
}
