import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import type { Logger } from "winston";

export interface HttpServerOptions {
  port: number;
  host?: string;
  registry: Registry;
  /** Undefined when ready; otherwise why not (shown in the /readyz body). */
  notReady: () => string | undefined;
  logger: Logger;
}

/** The operator's HTTP endpoints: `/healthz` (the process answers), `/readyz` (caches synced and fresh), `/metrics`. */
export class HttpServer {
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(options: HttpServerOptions): Promise<HttpServer> {
    const server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { "content-type": "text/plain" }).end("method not allowed\n");
        return;
      }
      switch (path) {
        case "/healthz":
          res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
          return;
        case "/readyz": {
          const why = options.notReady();
          res
            .writeHead(why === undefined ? 200 : 503, { "content-type": "text/plain" })
            .end(why === undefined ? "ok\n" : `not ready: ${why}\n`);
          return;
        }
        case "/metrics":
          options.registry.metrics().then(
            (body) => {
              res.writeHead(200, { "content-type": options.registry.contentType }).end(body);
            },
            (err: unknown) => {
              options.logger.warn("Could not collect metrics", {
                error: err instanceof Error ? err.message : String(err),
              });
              res.writeHead(500, { "content-type": "text/plain" }).end("could not collect metrics\n");
            },
          );
          return;
        default:
          res.writeHead(404, { "content-type": "text/plain" }).end("not found: try /healthz, /readyz or /metrics\n");
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port, options.host ?? "0.0.0.0", () => {
        server.off("error", reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    options.logger.info("Serving /healthz, /readyz and /metrics", { port });
    return new HttpServer(server, port);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}
