import { KubeConfig } from "@kubernetes/client-node";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** What the stand-in writes for one watch request: each string as one chunk, then it ends the stream or keeps it open. */
export interface WatchScript {
  chunks: string[];
  end: boolean;
  status?: number;
}

/**
 * A scripted stand-in for the API server over plain HTTP, for unit tests of the list-and-watch and request paths: it
 * answers lists with `lists` in turn (the last one repeats), watches with `watches` in turn (none left: an open,
 * silent watch), PATCHes with 200, and anything under `/gone/` with 404; it writes down each request and its
 * credentials. A real
 * API server cannot be told to end a watch with a 410 or an error at a chosen point; the integration tests cover the
 * rest against one.
 */
export class StandInApi {
  seen: string[] = [];
  tokens = new Set<string | undefined>();
  lists: object[][] = [[]];
  watches: WatchScript[] = [];
  #open: ServerResponse[] = [];

  private constructor(private readonly server: Server) {
    server.on("request", (req, res) => {
      const url = req.url ?? "";
      this.seen.push(`${req.method ?? ""} ${url}`);
      this.tokens.add(req.headers.authorization);
      if (url.includes("/gone/")) {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(JSON.stringify({ kind: "Status", code: 404, reason: "NotFound" }));
        return;
      }
      if (req.method === "PATCH") {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ metadata: { name: "p" } }));
        return;
      }
      if (!url.includes("watch=true")) {
        const items = this.lists.length > 1 ? this.lists.shift() : this.lists[0];
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ metadata: { resourceVersion: String(this.seen.length * 100) }, items }));
        return;
      }
      const watch = this.watches.shift() ?? { chunks: [], end: false };
      res.writeHead(watch.status ?? 200, { "content-type": "application/json" });
      for (const chunk of watch.chunks) res.write(chunk);
      if (watch.end) res.end();
      else this.#open.push(res);
    });
  }

  static async start(): Promise<StandInApi> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return new StandInApi(server);
  }

  /** A kubeconfig for the stand-in, with a bearer token. */
  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [
        { name: "c", server: `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`, skipTLSVerify: true },
      ],
      users: [{ name: "u", token: "t0ken" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }],
      currentContext: "x",
    });
    return kc;
  }

  /** Ends the open watches and forgets what was seen and scripted. */
  reset(): void {
    for (const res of this.#open) res.end();
    this.#open = [];
    this.seen = [];
    this.tokens = new Set();
    this.lists = [[]];
    this.watches = [];
  }

  async close(): Promise<void> {
    this.reset();
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
