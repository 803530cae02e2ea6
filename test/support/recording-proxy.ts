import { readdir, readFile, readlink, writeFile } from "node:fs/promises";
import {
  createServer,
  request as httpRequest,
  type ClientRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { Agent, request as httpsRequest } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { join } from "node:path";
import type { LocalCluster } from "./cluster.js";

/** One request seen by a {@link RecordingProxy}. */
export interface ProxiedRequest {
  /** When its head reached the proxy (`Date.now()` of the test process). */
  readonly at: number;
  /** `kubernetes`: from the one process given the proxy's kubeconfig; `buildkite`: from anyone using its endpoint. */
  readonly to: "kubernetes" | "buildkite";
  readonly method: string;
  readonly path: string;
  /** Buildkite: the watched process that owned the connection when it opened, if any (none: another, or it was gone). */
  readonly pid: number | undefined;
}

/**
 * Stands in front of the API server and the fake Buildkite and writes down requests, so a test can tell which
 * operator process sent a write, and when. Kubernetes: one process gets a kubeconfig pointing at the proxy in plain
 * HTTP, and the proxy goes on over TLS with the cluster's admin certificate. Buildkite: queues use `buildkiteEndpoint`,
 * and each connection is attributed to the process that owns its client end (Linux /proc), among the pids being
 * watched. Nothing is changed on the way; watches stream through.
 */
export class RecordingProxy {
  readonly #log: (Omit<ProxiedRequest, "pid"> & { owner: Promise<number | undefined> })[] = [];
  readonly #owners = new WeakMap<Socket, Promise<number | undefined>>();
  readonly #watched = new Set<number>();
  readonly #kube: Server;
  readonly #buildkite: Server;
  readonly #upstream: Agent;

  private constructor(
    private readonly cluster: LocalCluster,
    private readonly fakeUrl: URL,
    tls: { ca: Buffer; cert: Buffer; key: Buffer },
    readonly kubeconfigPath: string,
  ) {
    this.#upstream = new Agent({ keepAlive: true, ...tls });
    this.#kube = createServer((req, res) => {
      this.#toKubernetes(req, res);
    });
    this.#buildkite = createServer((req, res) => {
      this.#toBuildkite(req, res);
    });
    this.#buildkite.on("connection", (socket: Socket) => {
      this.#owners.set(socket, this.#ownerOf(socket.remotePort ?? 0));
    });
  }

  /** Starts the proxy; `fakeUrl` is the fake Buildkite's base URL. The kubeconfig goes to the cluster's directory. */
  static async start(cluster: LocalCluster, name: string, fakeUrl: string): Promise<RecordingProxy> {
    const [ca, cert, key] = await Promise.all(
      [cluster.pki.caCert, cluster.pki.adminCert, cluster.pki.adminKey].map((f) => readFile(f)),
    );
    if (!ca || !cert || !key) throw new Error("the cluster's PKI is incomplete");
    const path = join(cluster.dir, `kubeconfig-proxy-${name}`);
    const proxy = new RecordingProxy(cluster, new URL(fakeUrl), { ca, cert, key }, path);
    await Promise.all(
      [proxy.#kube, proxy.#buildkite].map((s) => new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve))),
    );
    // client-node refuses plain HTTP unless TLS verification is off (there is no TLS to verify); JSON is YAML.
    await writeFile(
      path,
      JSON.stringify({
        apiVersion: "v1",
        kind: "Config",
        "current-context": "proxy",
        clusters: [
          {
            name: "proxy",
            cluster: { server: `http://127.0.0.1:${port(proxy.#kube)}`, "insecure-skip-tls-verify": true },
          },
        ],
        users: [{ name: "proxy", user: {} }],
        contexts: [{ name: "proxy", context: { cluster: "proxy", user: "proxy" } }],
      }),
      { mode: 0o600 },
    );
    return proxy;
  }

  /** The Buildkite agent endpoint through the proxy, for a queue's `spec.endpoint`. */
  get buildkiteEndpoint(): string {
    return `http://127.0.0.1:${port(this.#buildkite)}/v3`;
  }

  /** Attributes Buildkite connections opened from now on by `pid` to it. */
  watch(pid: number): void {
    this.#watched.add(pid);
  }

  /** Every request seen so far, in the order their heads arrived. */
  async requests(): Promise<ProxiedRequest[]> {
    return Promise.all(this.#log.map(async ({ owner, ...r }) => ({ ...r, pid: await owner })));
  }

  async stop(): Promise<void> {
    for (const server of [this.#kube, this.#buildkite]) server.closeAllConnections();
    this.#upstream.destroy();
    await Promise.all([this.#kube, this.#buildkite].map((s) => new Promise((resolve) => s.close(resolve))));
  }

  #toKubernetes(req: IncomingMessage, res: ServerResponse): void {
    this.#record("kubernetes", req, Promise.resolve(undefined));
    const server = new URL(this.cluster.server);
    this.#relay(
      req,
      res,
      httpsRequest({
        host: server.hostname,
        port: server.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: server.host },
        agent: this.#upstream,
      }),
    );
  }

  #toBuildkite(req: IncomingMessage, res: ServerResponse): void {
    this.#record("buildkite", req, this.#owners.get(req.socket) ?? Promise.resolve(undefined));
    const { hostname, port: fakePort } = this.fakeUrl;
    this.#relay(
      req,
      res,
      httpRequest({
        host: hostname,
        port: fakePort,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: this.fakeUrl.host },
      }),
    );
  }

  /** Streams the request up and the answer back; either side closing closes the other. */
  #relay(req: IncomingMessage, res: ServerResponse, upstream: ClientRequest): void {
    upstream.on("response", (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      // A watch that has nothing to say yet must still get its headers, or its client waits forever.
      res.flushHeaders();
      answer.pipe(res);
    });
    upstream.on("error", () => {
      if (res.headersSent) res.destroy();
      else res.writeHead(502).end();
    });
    res.on("close", () => {
      upstream.destroy();
    });
    req.pipe(upstream);
  }

  #record(to: ProxiedRequest["to"], req: IncomingMessage, owner: Promise<number | undefined>): void {
    this.#log.push({ at: Date.now(), to, method: req.method ?? "", path: (req.url ?? "").split("?")[0] ?? "", owner });
  }

  /** The watched process holding the client end of a loopback connection from `clientPort`, if any. */
  async #ownerOf(clientPort: number): Promise<number | undefined> {
    for (const pid of this.#watched) if (await holdsPort(pid, clientPort)) return pid;
    return undefined;
  }
}

function port(server: Server): number {
  return (server.address() as AddressInfo).port;
}

/** Whether `pid` has a socket whose local port is `localPort`: /proc/<pid>/net/tcp names its inode, /proc/<pid>/fd holds it. */
async function holdsPort(pid: number, localPort: number): Promise<boolean> {
  const inodes = new Set<string>();
  for (const table of ["tcp", "tcp6"]) {
    const text = await readFile(`/proc/${String(pid)}/net/${table}`, "utf8").catch(() => "");
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (Number.parseInt(cols[1]?.split(":")[1] ?? "", 16) === localPort && cols[9]) inodes.add(`socket:[${cols[9]}]`);
    }
  }
  if (inodes.size === 0) return false;
  const fds = await readdir(`/proc/${String(pid)}/fd`).catch(() => []);
  const links = await Promise.all(fds.map((fd) => readlink(`/proc/${String(pid)}/fd/${fd}`).catch(() => "")));
  return links.some((link) => inodes.has(link));
}
