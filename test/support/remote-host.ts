import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run, runSync } from "../real-node/host.js";
import { eventually } from "./eventually.js";
import { httpGet } from "./https-probe.js";
import { ProcessGroup } from "./managed-process.js";

/** An HTTP forward proxy on the remote host. */
export interface RemoteProxyOptions {
  /** One of the host's addresses. */
  readonly address: string;
  readonly port: number;
}

/** Options for {@link RemoteHost.start}. */
export interface RemoteHostOptions {
  /**
   * Addresses the host answers HTTP on, port 80 (`remote-ok <address>`). Documentation ranges only (RFC 5737): tests
   * never aim a packet at a cloud address, not even one routed here.
   */
  readonly addresses: readonly string[];
  /**
   * Ranges routed to the host and guarded: from before anything is sent until {@link RemoteHost.stop}, every packet to
   * them that would leave through any interface but the test's own veth is dropped, so nothing sent to them leaves
   * the machine. Must cover every address; may hold more (the cloud metadata range, as a safety net).
   */
  readonly guardedCidrs: readonly string[];
  /**
   * A forward proxy (absolute-form requests and CONNECT) that forwards only to the host's own addresses and logs
   * each request (`proxied <method> <target> for <client>`, or `refused …`).
   */
  readonly proxy?: RemoteProxyOptions;
  /** The veth pair's /30 (default 10.251.0.0/30): the host side gets .1, the remote host .2. */
  readonly linkNet?: string;
}

/** The server of the remote host; `CONFIG` is replaced by its addresses and proxy. */
const SERVER = `const CONFIG = __CONFIG__;
const http = require("node:http"), net = require("node:net");
const own = new Set(CONFIG.addresses);
http.createServer((req, res) => {
  console.log("served " + req.socket.localAddress + " to " + req.socket.remoteAddress);
  res.end("remote-ok " + req.socket.localAddress + "\\n");
}).listen(80, "0.0.0.0", () => console.log("listening on 80"));
if (CONFIG.proxy) {
  const proxy = http.createServer((req, res) => {
    let target;
    try { target = new URL(req.url); } catch { target = undefined; }
    if (!target || target.protocol !== "http:" || !own.has(target.hostname)) {
      console.log("refused " + req.method + " " + req.url + " for " + req.socket.remoteAddress);
      res.writeHead(403).end("refused by the proxy\\n");
      return;
    }
    console.log("proxied " + req.method + " " + req.url + " for " + req.socket.remoteAddress);
    // hop-by-hop headers stay on their hop: the client's connection ends with the answer, as it asked
    const hop = (headers) => Object.fromEntries(Object.entries(headers).filter(([k]) => !["connection", "keep-alive", "proxy-connection"].includes(k)));
    const up = http.request({ host: target.hostname, port: Number(target.port || 80), path: target.pathname + target.search, method: req.method,
      headers: hop(req.headers), agent: false }, (answer) => { res.writeHead(answer.statusCode, hop(answer.headers)); answer.pipe(res); });
    up.on("error", (err) => { res.writeHead(502).end(String(err) + "\\n"); });
    req.pipe(up);
  });
  proxy.on("connect", (req, socket, head) => {
    const colon = req.url.lastIndexOf(":");
    const host = req.url.slice(0, colon), port = Number(req.url.slice(colon + 1));
    if (!own.has(host)) {
      console.log("refused CONNECT " + req.url + " for " + req.socket.remoteAddress);
      socket.end("HTTP/1.1 403 Forbidden\\r\\n\\r\\n");
      return;
    }
    console.log("proxied CONNECT " + req.url + " for " + req.socket.remoteAddress);
    const up = net.connect(port, host, () => {
      socket.write("HTTP/1.1 200 Connection Established\\r\\n\\r\\n");
      up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
  });
  proxy.listen(CONFIG.proxy.port, CONFIG.proxy.address, () => console.log("proxy listening"));
}`;

const IP = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => existsSync(p)) ?? "ip";

/** One guard rule: where it sits and its match, for `iptables -I` and `-D`. */
interface GuardRule {
  readonly table: string;
  readonly chain: string;
  readonly spec: readonly string[];
}

/** A guard rule as the kernel holds it, read back with `iptables -S`. */
export interface InstalledGuard {
  readonly table: string;
  readonly chain: string;
  /** The rule's place in its chain, 1 first. */
  readonly position: number;
  /** `-d` */
  readonly destination: string;
  /** `! -o`: the only interface packets to the destination may leave by. */
  readonly exceptOut: string;
  /** `-j` */
  readonly target: string;
}

const GUARD_CHAINS = [
  ["mangle", "POSTROUTING"],
  ["filter", "OUTPUT"],
  ["filter", "FORWARD"],
] as const;

/**
 * A host off the node for NetworkPolicy tests: a network namespace made by the test, holding documentation addresses
 * on a veth, serving HTTP on them (and optionally a forward proxy), routed from the node. Guard rules (iptables,
 * before anything is sent) drop every packet to the guarded ranges that would leave by another interface: in mangle
 * POSTROUTING, the last hook before a packet leaves, where no other component's ACCEPT can skip it, and in filter
 * OUTPUT and FORWARD as well.
 *
 * Start it before a real node and stop it after the node: kube-router rewrites the whole filter table on every sync
 * (`iptables-save`, its changes, `iptables-restore`), so a filter rule put in while it runs can be lost, and one taken
 * out can come back. Its log lives in a directory of its own (kept with BK_KEEP_CLUSTER=1), as it outlives a cluster.
 */
export class RemoteHost {
  #stopped = false;

  private constructor(
    readonly namespace: string,
    readonly veth: string,
    private readonly id: string,
    private readonly guards: readonly GuardRule[],
    private readonly processes: ProcessGroup,
    private readonly dir: string,
  ) {}

  private get logFile(): string {
    return join(this.dir, "remote-host.log");
  }

  #forgetExitHook: () => void = () => undefined;

  /** Guards the ranges, creates the namespace and its link, starts the server and waits until the host reaches it. */
  static async start(options: RemoteHostOptions): Promise<RemoteHost> {
    removeStaleGuards();
    const id = randomBytes(3).toString("hex");
    const namespace = `bk-remote-${id}`;
    const veth = `bkr-${id}`;
    const [a, b, c] = (options.linkNet ?? "10.251.0.0/30").split("/")[0]?.split(".") ?? [];
    const hostSide = `${a ?? ""}.${b ?? ""}.${c ?? ""}.1`;
    const remoteSide = `${a ?? ""}.${b ?? ""}.${c ?? ""}.2`;
    const comment = ["-m", "comment", "--comment", guardComment(id)];
    const guards: GuardRule[] = options.guardedCidrs.flatMap((cidr) =>
      GUARD_CHAINS.map(([table, chain]) => ({
        table,
        chain,
        spec: ["-d", cidr, "!", "-o", veth, ...comment, "-j", "DROP"],
      })),
    );
    const processes = new ProcessGroup();
    const host = new RemoteHost(
      namespace,
      veth,
      id,
      guards,
      processes,
      await mkdtemp(join(tmpdir(), "bk-remote-host-")),
    );
    // A test runner that exits without stop() still removes the namespace and the guards (before the cluster's own
    // exit clean-up, hence prepended).
    const undo = (): void => {
      host.cleanupSync(true);
      if (process.env.BK_KEEP_CLUSTER !== "1") rmSync(host.dir, { recursive: true, force: true });
    };
    process.prependListener("exit", undo);
    host.#forgetExitHook = () => {
      process.off("exit", undo);
    };
    try {
      for (const g of guards) await run("iptables", ["-t", g.table, "-I", g.chain, "1", ...g.spec]);
      await run(IP, ["netns", "add", namespace]);
      await run(IP, ["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace]);
      await run(IP, ["addr", "add", `${hostSide}/30`, "dev", veth]);
      await run(IP, ["link", "set", veth, "up"]);
      const inNs = (args: readonly string[]): Promise<string> => run(IP, ["-n", namespace, ...args]);
      await inNs(["link", "set", "lo", "up"]);
      await inNs(["addr", "add", `${remoteSide}/30`, "dev", "eth0"]);
      for (const address of options.addresses) await inNs(["addr", "add", `${address}/32`, "dev", "eth0"]);
      await inNs(["link", "set", "eth0", "up"]);
      await inNs(["route", "add", "default", "via", hostSide]);
      for (const cidr of options.guardedCidrs) await run(IP, ["route", "add", cidr, "via", remoteSide, "dev", veth]);
      const script = SERVER.replace(
        "__CONFIG__",
        JSON.stringify({ addresses: options.addresses, proxy: options.proxy }),
      );
      const server = processes.start({
        name: "remote-host",
        binary: IP,
        logFile: host.logFile,
        args: ["netns", "exec", namespace, process.execPath, "-e", script],
      });
      for (const address of options.addresses) {
        await server.waitReady(
          async () => (await httpGet(`http://${address}/`)).body.startsWith("remote-ok"),
          10_000,
          "The remote host did not answer from its namespace.",
        );
      }
      if (options.proxy) {
        await server.waitReady(
          () => Promise.resolve(host.logLines().includes("proxy listening")),
          10_000,
          "The remote host's proxy did not start.",
        );
      }
      return host;
    } catch (err) {
      await host.stop();
      throw err;
    }
  }

  /** The requests the HTTP server answered, as `served <its address> to <client address>`. */
  served(): string[] {
    return this.logLines().filter((l) => l.startsWith("served "));
  }

  /** What the proxy did with each request: `proxied|refused <method> <target> for <client address>`. */
  proxied(): string[] {
    return this.logLines().filter((l) => l.startsWith("proxied ") || l.startsWith("refused "));
  }

  /** Packets the guard rules dropped so far (each of them would have left the machine), of one range or all. */
  async guardDrops(cidr?: string): Promise<number> {
    let total = 0;
    for (const table of new Set(this.guards.map((g) => g.table))) {
      const listing = await run("iptables", ["-t", table, "-L", "-v", "-x", "-n"]);
      for (const line of listing.split("\n").filter((l) => l.includes(guardComment(this.id)))) {
        const fields = line.trim().split(/\s+/);
        // pkts bytes target prot opt in out source destination
        if (cidr === undefined || fields[8] === cidr) total += Number(fields[0] ?? 0);
      }
    }
    return total;
  }

  /** The guard rules the kernel holds now, read back with `iptables -S` from every chain they were put in. */
  async installedGuards(): Promise<InstalledGuard[]> {
    const found: InstalledGuard[] = [];
    for (const [table, chain] of GUARD_CHAINS) {
      const rules = (await run("iptables", ["-t", table, "-S", chain])).split("\n").filter((l) => l.startsWith("-A "));
      rules.forEach((rule, i) => {
        if (!rule.includes(guardComment(this.id))) return;
        found.push({
          table,
          chain,
          position: i + 1,
          destination: /-d (\S+)/.exec(rule)?.[1] ?? "",
          exceptOut: /! -o (\S+)/.exec(rule)?.[1] ?? "",
          target: /-j (\S+)/.exec(rule)?.[1] ?? "",
        });
      });
    }
    return found;
  }

  /**
   * Stops the server, deletes the namespace (its veth and routes go with it), then removes the guard rules and checks
   * that none is left.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    await this.processes.stopAll(2_000);
    this.cleanupSync(false);
    // The routes to the guarded ranges go with the veth, once the namespace is gone: only then may the guards go.
    await eventually(
      () => {
        if (existsSync(`/sys/class/net/${this.veth}`)) throw new Error(`${this.veth} still exists`);
      },
      { timeoutMs: 10_000, what: `the veth ${this.veth} to go with its namespace` },
    );
    this.removeGuards();
    this.#forgetExitHook();
    if (process.env.BK_KEEP_CLUSTER !== "1") rmSync(this.dir, { recursive: true, force: true });
    const left = await this.installedGuards();
    if (left.length > 0)
      throw new Error(`guard rules left after stop (did kube-router still run?): ${JSON.stringify(left)}`);
  }

  private logLines(): string[] {
    return existsSync(this.logFile) ? readFileSync(this.logFile, "utf8").split("\n") : [];
  }

  /** Synchronous, for `stop()` and for a test runner that exits without it. */
  private cleanupSync(andGuards: boolean): void {
    this.#stopped = true;
    this.processes.get("remote-host")?.kill("SIGKILL");
    try {
      runSync(IP, ["netns", "del", this.namespace]);
    } catch {
      // not created, or already gone
    }
    if (andGuards) this.removeGuards();
  }

  private removeGuards(): void {
    for (const g of this.guards) {
      try {
        runSync("iptables", ["-t", g.table, "-D", g.chain, ...g.spec]);
      } catch {
        // not inserted, or already removed
      }
    }
  }
}

const guardComment = (id: string): string => `bk-operator-test guard ${id}`;

/**
 * Removes the guard rules of earlier runs that could not remove their own (their veth is gone): a rule that lets
 * packets to a range leave only by a veth that no longer exists would drop this run's packets to it.
 */
function removeStaleGuards(): void {
  for (const [table, chain] of GUARD_CHAINS) {
    for (const rule of runSync("iptables", ["-t", table, "-S", chain]).split("\n")) {
      const m =
        /^-A \S+ -d (\S+) ! -o (\S+) -m comment --comment "?(bk-operator-test (?:metadata )?guard \w+)"? -j DROP$/.exec(
          rule.trim(),
        );
      if (!m || existsSync(`/sys/class/net/${m[2] ?? ""}`)) continue;
      runSync("iptables", [
        "-t",
        table,
        "-D",
        chain,
        "-d",
        m[1] ?? "",
        "!",
        "-o",
        m[2] ?? "",
        "-m",
        "comment",
        "--comment",
        m[3] ?? "",
        "-j",
        "DROP",
      ]);
    }
  }
}
