import type { Informer, KubernetesObject, ObjectCache, ObjectCallback } from "@kubernetes/client-node";
import { KubeRequestError, type KubeRaw } from "./kube-raw.js";

/**
 * A list-and-watch with client-node's informer shape (so a {@link SupervisedInformer} can supervise it) over
 * {@link KubeRaw}: each event's line is parsed once and, with `transform`, cut down to what its reader needs before it
 * is cached, so a watch of whole pods costs a JSON.parse per event and keeps only a few fields. No WHATWG fetch, web
 * streams or typed models (client-node's informer uses all three per event and per listed object).
 *
 * It relists by itself when its resourceVersion is too old (410 Gone) and watches again when the API server ends a
 * watch (`timeoutSeconds`); any other failure of the watch is reported to the `error` callbacks and it stops, as
 * client-node's ListWatch does. A failed first list rejects `start()`.
 */

type Verb = "add" | "update" | "delete";
/** Raw objects as the API server sent them, before `transform`. */
export type RawObject = KubernetesObject & Record<string, unknown>;

/** Server-side watch length: well within undici's 300 s body timeout, so a quiet watch ends cleanly and is renewed. */
const WATCH_SECONDS = 240;

export class LeanInformer<T extends KubernetesObject> implements Informer<T>, ObjectCache<T> {
  readonly #objects = new Map<string, T>();
  readonly #callbacks: Record<Verb | "error" | "connect", ((arg: never) => void)[]> = {
    add: [],
    update: [],
    delete: [],
    error: [],
    connect: [],
  };
  #abort: AbortController | undefined;
  #resourceVersion = "";

  constructor(
    private readonly raw: KubeRaw,
    /** The collection's path, e.g. `/api/v1/namespaces/ns/pods`. */
    private readonly path: string,
    private readonly transform: (obj: RawObject) => T = (obj) => obj as unknown as T,
  ) {}

  on(verb: Verb | "change", cb: ObjectCallback<T>): void;
  on(verb: "error" | "connect", cb: (err?: unknown) => void): void;
  on(verb: Verb | "change" | "error" | "connect", cb: (arg: never) => void): void {
    // "change" is every add, update and delete, as in client-node.
    for (const v of verb === "change" ? (["add", "update", "delete"] as const) : [verb]) this.#callbacks[v].push(cb);
  }

  off(verb: Verb | "change", cb: ObjectCallback<T>): void;
  off(verb: "error" | "connect", cb: (err?: unknown) => void): void;
  off(verb: Verb | "change" | "error" | "connect", cb: (arg: never) => void): void {
    for (const v of verb === "change" ? (["add", "update", "delete"] as const) : [verb]) {
      const list = this.#callbacks[v];
      const i = list.indexOf(cb);
      if (i >= 0) list.splice(i, 1);
    }
  }

  /**
   * Lists into the cache (only the first time: a restart after an error watches on from the last resourceVersion,
   * as client-node's ListWatch does), then watches in the background. Rejects if the list fails.
   */
  async start(): Promise<void> {
    this.#abort?.abort();
    const abort = (this.#abort = new AbortController());
    if (this.#resourceVersion === "") await this.#list(abort.signal);
    void this.#watch(abort.signal);
  }

  stop(): Promise<void> {
    this.#abort?.abort();
    this.#abort = undefined;
    return Promise.resolve();
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#objects.get(`${namespace ?? ""}/${name}`);
  }

  list(namespace?: string): readonly T[] {
    const all = [...this.#objects.values()];
    return namespace === undefined ? all : all.filter((o) => o.metadata?.namespace === namespace);
  }

  /** Replaces the cache with a fresh list: objects gone from it are reported deleted, the rest added or updated. */
  async #list(signal: AbortSignal): Promise<void> {
    const list = (await this.raw.get(this.path, signal)) as {
      metadata?: { resourceVersion?: string };
      items?: RawObject[];
    };
    if (signal.aborted) return;
    const seen = new Set<string>();
    for (const item of list.items ?? []) seen.add(this.#upsert(item));
    for (const [key, obj] of this.#objects)
      if (!seen.has(key)) {
        this.#objects.delete(key);
        this.#emit("delete", obj);
      }
    this.#resourceVersion = list.metadata?.resourceVersion ?? "";
  }

  async #watch(signal: AbortSignal): Promise<void> {
    try {
      while (!signal.aborted) {
        this.#emit("connect", undefined);
        const query = `watch=true&allowWatchBookmarks=true&timeoutSeconds=${String(WATCH_SECONDS)}&resourceVersion=${this.#resourceVersion}`;
        const answer = await this.raw.request("GET", `${this.path}?${query}`, { signal });
        if (answer.statusCode === 410) {
          await answer.body.dump();
          await this.#list(signal);
          continue;
        }
        if (answer.statusCode !== 200)
          throw new KubeRequestError(answer.statusCode, await answer.body.text(), `watch ${this.path}`);
        answer.body.setEncoding("utf8");
        let pending = "";
        let expired = false;
        for await (const chunk of answer.body as AsyncIterable<string>) {
          pending += chunk;
          let newline: number;
          while ((newline = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, newline);
            pending = pending.slice(newline + 1);
            if (line !== "") expired ||= this.#event(JSON.parse(line) as WatchEvent);
          }
        }
        // A 410 inside the stream ("too old resource version"): list again, then watch from there.
        if (expired) await this.#list(signal);
      }
    } catch (err) {
      if (!signal.aborted) this.#emit("error", err);
    }
  }

  /** Applies one watch event; true if it says the resourceVersion has expired. */
  #event(event: WatchEvent): boolean {
    const obj = event.object;
    switch (event.type) {
      case "ADDED":
      case "MODIFIED":
        this.#upsert(obj);
        break;
      case "DELETED": {
        const key = keyOf(obj);
        const cached = this.#objects.get(key) ?? this.transform(obj);
        this.#objects.delete(key);
        this.#emit("delete", cached);
        break;
      }
      case "ERROR":
        if ((obj as { code?: unknown }).code === 410) return true;
        throw new KubeRequestError(
          Number((obj as { code?: unknown }).code ?? 0),
          JSON.stringify(obj),
          `watch ${this.path}`,
        );
      case "BOOKMARK":
        break;
    }
    this.#resourceVersion = obj.metadata?.resourceVersion ?? this.#resourceVersion;
    return false;
  }

  /** Caches the object's transform and reports it added or updated; returns its key. */
  #upsert(obj: RawObject): string {
    const key = keyOf(obj);
    const had = this.#objects.has(key);
    const slim = this.transform(obj);
    this.#objects.set(key, slim);
    this.#emit(had ? "update" : "add", slim);
    return key;
  }

  #emit(verb: Verb | "error" | "connect", arg: unknown): void {
    for (const cb of this.#callbacks[verb]) (cb as (a: unknown) => void)(arg);
  }
}

interface WatchEvent {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: RawObject;
}

const keyOf = (obj: KubernetesObject): string => `${obj.metadata?.namespace ?? ""}/${obj.metadata?.name ?? ""}`;
