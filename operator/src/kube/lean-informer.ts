import {
  ApiException,
  type Informer,
  type KubernetesObject,
  type ObjectCache,
  type ObjectCallback,
} from "@kubernetes/client-node";
import type { Readable } from "node:stream";

/**
 * A list-and-watch with client-node's informer shape (so a {@link SupervisedInformer} can supervise it) over a
 * {@link ListWatchSource}: the operator's `LeanTransport`, or the test harness's `KubeRaw`. Each event's line is
 * parsed once and, with `transform`, cut down to what its reader needs before it is cached. No WHATWG fetch, web
 * streams or typed models: client-node's informer uses all three per event and per listed object, and was the
 * operator's largest CPU cost per job. Objects are cached as the API server sent them (date-time fields are ISO
 * strings, never `Date`s, whatever the client-node model types say).
 *
 * It relists by itself when its resourceVersion is too old (410 Gone) and watches again when the API server ends a
 * watch (`timeoutSeconds`); any other failure of the watch is reported to the `error` callbacks and it stops, as
 * client-node's ListWatch does. A failed first list rejects `start()`.
 */

/** What the informer needs of a transport; both errors and authentication are the transport's. */
export interface ListWatchSource {
  /** GETs a collection (`path` with its query) as parsed JSON; rejects on an error status. */
  list(path: string, signal: AbortSignal): Promise<unknown>;
  /**
   * Opens a watch (`path` with its query): its body, one JSON event per line; undefined when the API server answers
   * 410 Gone. Rejects on any other error status. `signal` ends it.
   */
  watch(path: string, signal: AbortSignal): Promise<Readable | undefined>;
}

type Verb = "add" | "update" | "delete";
/** Raw objects as the API server sent them, before `transform`. */
export type RawObject = KubernetesObject & Record<string, unknown>;

export interface LeanInformerOptions<T> {
  /** Only objects with these labels, e.g. `app=x,component=y`. */
  labelSelector?: string;
  /** What is cached of each object; default the object itself. */
  transform?: (obj: RawObject) => T;
}

/**
 * Server-side watch length: a quiet watch ends cleanly and is renewed from its last resourceVersion, well within the
 * 300 s body timeout of undici (the harness's transport) and the API server's own choice (30–60 min).
 */
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
  readonly #transform: (obj: RawObject) => T;
  readonly #selector: Record<string, string>;
  #abort: AbortController | undefined;
  #resourceVersion = "";

  constructor(
    private readonly source: ListWatchSource,
    /** The collection's path, e.g. `/api/v1/namespaces/ns/pods`. */
    private readonly path: string,
    options: LeanInformerOptions<T> = {},
  ) {
    this.#transform = options.transform ?? ((obj) => obj as unknown as T);
    this.#selector = options.labelSelector === undefined ? {} : { labelSelector: options.labelSelector };
  }

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
    const list = (await this.source.list(this.#url({}), signal)) as {
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
        const query = {
          watch: "true",
          allowWatchBookmarks: "true",
          timeoutSeconds: String(WATCH_SECONDS),
          resourceVersion: this.#resourceVersion,
        };
        const body = await this.source.watch(this.#url(query), signal);
        // 410 Gone, or a 410 inside the stream ("too old resource version"): list again, then watch from there.
        if (body === undefined || (await this.#events(body))) await this.#list(signal);
      }
    } catch (err) {
      if (!signal.aborted) this.#emit("error", err);
    }
  }

  /** Applies a watch's events until the API server ends it; true if one said the resourceVersion has expired. */
  async #events(body: Readable): Promise<boolean> {
    body.setEncoding("utf8");
    let pending = "";
    let expired = false;
    for await (const chunk of body as AsyncIterable<string>) {
      pending += chunk;
      let newline: number;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line !== "") expired ||= this.#event(JSON.parse(line) as WatchEvent);
      }
    }
    return expired;
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
        const cached = this.#objects.get(key) ?? this.#transform(obj);
        this.#objects.delete(key);
        this.#emit("delete", cached);
        break;
      }
      case "ERROR": {
        // The object is a metav1.Status; its code classifies the failure as an error status would.
        const code = (obj as { code?: unknown }).code;
        if (code === 410) return true;
        throw new ApiException(
          typeof code === "number" ? code : 0,
          `the watch of ${this.path} ended with an error`,
          JSON.stringify(obj),
          {},
        );
      }
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
    const slim = this.#transform(obj);
    this.#objects.set(key, slim);
    this.#emit(had ? "update" : "add", slim);
    return key;
  }

  /** The collection's path with the label selector and `query`. */
  #url(query: Record<string, string>): string {
    const params = new URLSearchParams({ ...this.#selector, ...query }).toString();
    return params === "" ? this.path : `${this.path}?${params}`;
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
