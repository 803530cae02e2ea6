import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../real-node/host.js";
import { descendants, onExit, ProcessGroup } from "./managed-process.js";
import { freePort } from "./ports.js";

const HTTP_BACKEND = "/usr/lib/git-core/git-http-backend";
const SSHD = "/usr/sbin/sshd";
/** sshd's privilege separation directory (Debian's openssh-server makes it at boot, through its service). */
const PRIVSEP_DIR = "/run/sshd";
const REPO = "private.git";
/** git run by the test itself: no system or user configuration, so the host's settings do not matter. */
const GIT_ISOLATION = ["GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"];

/** Options for {@link GitServer.start}. */
export interface GitServerOptions {
  /** The address both servers listen on: the real node's bridge (pods' gateway), or 127.0.0.1. */
  readonly address: string;
  /** Also serve the repository over SSH (needs `/usr/sbin/sshd`; hack/build-node.sh installs it). Default true. */
  readonly ssh?: boolean;
}

/** The SSH side of a {@link GitServer}. */
export interface GitSshAccess {
  /** `ssh://root@<address>:<port>/private.git` */
  readonly url: string;
  /** The client's private key (OpenSSH format, no passphrase), generated per server. */
  readonly privateKey: string;
  /** The one `known_hosts` line of the server's host key, generated per server: `[address]:port ssh-ed25519 …`. */
  readonly knownHosts: string;
}

/** A request the HTTP side answered. */
export interface GitHttpRequest {
  readonly method: string;
  readonly path: string;
  /** The Basic user when the credentials were right; undefined when they were missing or wrong. */
  readonly user: string | undefined;
  readonly status: number;
}

/** The forced command of the SSH key: read-only access to the one repository, each request logged. */
const SSH_COMMAND = `#!/bin/sh
echo "ssh $SSH_ORIGINAL_COMMAND" >>"$(dirname "$0")/ssh-requests.log"
case "$SSH_ORIGINAL_COMMAND" in
  "git-upload-pack '/${REPO}'"|"git-upload-pack '${REPO}'") exec git-upload-pack "$(dirname "$0")/repos/${REPO}" ;;
  *) echo "this server only lets the test's key fetch /${REPO}" >&2; exit 1 ;;
esac
`;

/**
 * A private git repository for checkout tests, reachable from the real node's pods: one bare repository
 * (`private.git`, branch `main`, one commit holding `marker.txt`) served by smart HTTP (`git http-backend` behind a
 * Node server that demands Basic auth with a per-run token) and, unless told otherwise, by a throwaway sshd on a high
 * port whose only authorized key (generated per run) may do nothing but fetch that repository. Every key, token and
 * the host key are new each time. {@link stop} ends the servers and removes their directory.
 *
 * The sshd runs as root (it can only log users in as itself otherwise) and lets `root` in with that key alone,
 * through `PermitRootLogin forced-commands-only`: the key's forced command is {@link SSH_COMMAND}.
 */
export class GitServer {
  readonly #requests: GitHttpRequest[] = [];
  readonly #backends = new Set<ChildProcess>();
  #stopped = false;
  #forgetExitHook: () => void = () => undefined;

  private constructor(
    private readonly dir: string,
    private readonly http: Server,
    private readonly processes: ProcessGroup,
    private readonly madePrivsepDir: boolean,
    /** `http://<address>:<port>/private.git` */
    readonly httpUrl: string,
    /** Basic auth user of the HTTP side. */
    readonly username: string,
    /** Basic auth password (the "token") of the HTTP side. */
    readonly token: string,
    /** What `marker.txt` of the repository holds (without a newline), new per run. */
    readonly marker: string,
    /** The commit of `main`. */
    readonly commit: string,
    readonly ssh: GitSshAccess | undefined,
  ) {}

  /** A `git credential-store` line for the HTTP side: `http://user:token@address:port`. */
  get credentialsLine(): string {
    const url = new URL(this.httpUrl);
    return `http://${this.username}:${this.token}@${url.host}`;
  }

  /** What the HTTP side answered so far, oldest first. */
  requests(): readonly GitHttpRequest[] {
    return [...this.#requests];
  }

  /** The SSH commands the key ran so far (`git-upload-pack '/private.git'`). */
  sshRequests(): string[] {
    const log = join(this.dir, "ssh-requests.log");
    return existsSync(log)
      ? readFileSync(log, "utf8")
          .split("\n")
          .filter((l) => l.startsWith("ssh "))
          .map((l) => l.slice("ssh ".length))
      : [];
  }

  static async start(options: GitServerOptions): Promise<GitServer> {
    const dir = await mkdtemp(join(tmpdir(), "bk-git-server-"));
    const forgetDir = onExit(() => {
      rmSync(dir, { recursive: true, force: true });
    });
    const marker = `private-repo-marker-${randomBytes(6).toString("hex")}`;
    const commit = await createRepository(dir, marker);
    const username = "bk-checkout";
    const token = `gittoken-${randomBytes(12).toString("hex")}`;
    const http = createServer();
    const processes = new ProcessGroup();
    const wantSsh = options.ssh ?? true;
    const madePrivsepDir = wantSsh && !existsSync(PRIVSEP_DIR);
    let server: GitServer | undefined;
    try {
      const port = await listen(http, options.address);
      const ssh = wantSsh ? await startSshd(dir, options.address, processes, madePrivsepDir) : undefined;
      server = new GitServer(
        dir,
        http,
        processes,
        madePrivsepDir,
        `http://${options.address}:${port}/${REPO}`,
        username,
        token,
        marker,
        commit,
        ssh,
      );
      const self = server;
      http.on("request", (req, res) => {
        self.serve(req, res);
      });
      const forgetProcesses = onExit(() => {
        for (const backend of self.#backends) backend.kill("SIGKILL");
        killAll(self.sshConnections());
        if (madePrivsepDir) removeEmptyDir(PRIVSEP_DIR);
      });
      self.#forgetExitHook = () => {
        forgetProcesses();
        forgetDir();
      };
      return self;
    } catch (err) {
      if (server) await server.stop();
      else {
        http.close();
        await processes.stopAll(2_000);
        if (madePrivsepDir) removeEmptyDir(PRIVSEP_DIR);
        rmSync(dir, { recursive: true, force: true });
        forgetDir();
      }
      throw err;
    }
  }

  /** Basic auth, then `git http-backend` as a CGI program (git's documented smart-HTTP server). */
  private serve(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://git-server");
    const user = this.authorized(req.headers.authorization);
    const record = (status: number): void => {
      this.#requests.push({ method: req.method ?? "", path: url.pathname, user, status });
    };
    if (user === undefined) {
      record(401);
      res.writeHead(401, { "WWW-Authenticate": 'Basic realm="bk-private-git"' }).end("credentials required\n");
      return;
    }
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      GIT_PROJECT_ROOT: join(this.dir, "repos"),
      GIT_HTTP_EXPORT_ALL: "1",
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_CONFIG_GLOBAL: "/dev/null",
      GATEWAY_INTERFACE: "CGI/1.1",
      SERVER_PROTOCOL: "HTTP/1.1",
      REQUEST_METHOD: req.method,
      PATH_INFO: decodeURIComponent(url.pathname),
      QUERY_STRING: url.search.slice(1),
      REMOTE_USER: user,
      REMOTE_ADDR: req.socket.remoteAddress,
      CONTENT_TYPE: req.headers["content-type"],
      CONTENT_LENGTH: req.headers["content-length"],
      HTTP_CONTENT_ENCODING: req.headers["content-encoding"],
      GIT_PROTOCOL: req.headers["git-protocol"] as string | undefined,
    };
    const backend = spawn(HTTP_BACKEND, [], { env, stdio: ["pipe", "pipe", "pipe"] });
    this.#backends.add(backend);
    backend.on("exit", () => this.#backends.delete(backend));
    backend.on("error", (err) => {
      record(500);
      if (!res.headersSent) res.writeHead(500).end(`${String(err)}\n`);
    });
    backend.stderr.resume();
    req.pipe(backend.stdin);
    backend.stdin.on("error", () => undefined);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      const endLf = head.indexOf("\n\n");
      const [at, sep] = end >= 0 && (endLf < 0 || end < endLf) ? [end, 4] : [endLf, 2];
      if (at < 0) return;
      backend.stdout.off("data", onData);
      const headers: Record<string, string> = {};
      let status = 200;
      for (const line of head.subarray(0, at).toString("latin1").split(/\r?\n/)) {
        const colon = line.indexOf(":");
        if (colon < 0) continue;
        const [name, value] = [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
        if (name.toLowerCase() === "status") status = Number.parseInt(value, 10);
        else headers[name] = value;
      }
      record(status);
      res.writeHead(status, headers);
      res.write(head.subarray(at + sep));
      backend.stdout.pipe(res);
    };
    backend.stdout.on("data", onData);
  }

  private authorized(header: string | undefined): string | undefined {
    if (!header?.startsWith("Basic ")) return undefined;
    const [user, ...rest] = Buffer.from(header.slice("Basic ".length), "base64").toString("utf8").split(":");
    return user === this.username && rest.join(":") === this.token ? user : undefined;
  }

  /** The per-connection processes of sshd (children of the listener, which is the managed process itself). */
  private sshConnections(): number[] {
    const pid = this.processes.get("git-sshd")?.pid;
    return pid === undefined ? [] : descendants(pid);
  }

  /** Stops both servers (and any backend still answering) and removes the directory. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const backend of this.#backends) backend.kill("SIGKILL");
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => {
      this.http.close(() => {
        resolve();
      });
    });
    // sshd's per-connection processes outlive its listener until their client leaves
    const connections = this.sshConnections();
    await this.processes.stopAll(2_000);
    killAll(connections);
    if (this.madePrivsepDir) removeEmptyDir(PRIVSEP_DIR);
    rmSync(this.dir, { recursive: true, force: true });
    this.#forgetExitHook();
  }
}

/** A bare `private.git` under DIR/repos with one commit on `main` holding marker.txt; returns the commit. */
async function createRepository(dir: string, marker: string): Promise<string> {
  const work = join(dir, "work");
  const bare = join(dir, "repos", REPO);
  const git = (args: readonly string[]): Promise<string> => run("env", [...GIT_ISOLATION, "git", ...args]);
  await git(["init", "-q", "--initial-branch=main", work]);
  await writeFile(join(work, "marker.txt"), `${marker}\n`);
  await git(["-C", work, "add", "marker.txt"]);
  await git(["-C", work, "-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "marker"]);
  await git(["clone", "-q", "--bare", work, bare]);
  rmSync(work, { recursive: true, force: true });
  return (await git(["--git-dir", bare, "rev-parse", "main"])).trim();
}

/** Starts sshd on a free port of `address` with a new host key and one authorized client key; waits until it listens. */
async function startSshd(
  dir: string,
  address: string,
  processes: ProcessGroup,
  makePrivsepDir: boolean,
): Promise<GitSshAccess> {
  if (!existsSync(SSHD)) throw new Error(`${SSHD} is missing: run \`bash hack/build-node.sh packages\``);
  const [hostKey, clientKey, command] = ["host_ed25519", "client_ed25519", "git-command"].map((f) => join(dir, f)) as [
    string,
    string,
    string,
  ];
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "bk-git-server-host", "-f", hostKey]);
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "bk-git-server-client", "-f", clientKey]);
  await writeFile(command, SSH_COMMAND, { mode: 0o755 });
  await writeFile(
    join(dir, "authorized_keys"),
    `restrict,command="${command}" ${readFileSync(`${clientKey}.pub`, "utf8").trim()}\n`,
    { mode: 0o600 },
  );
  const port = await freePort();
  await writeFile(
    join(dir, "sshd_config"),
    [
      `ListenAddress ${address}:${port}`,
      `HostKey ${hostKey}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      // the key lives in a temporary directory, not a home directory with the modes StrictModes expects
      "StrictModes no",
      "UsePAM no",
      "AuthenticationMethods publickey",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PermitRootLogin forced-commands-only",
      "AllowUsers root",
      "AcceptEnv GIT_PROTOCOL",
      "DisableForwarding yes",
      "PermitTTY no",
      "LogLevel VERBOSE",
      "",
    ].join("\n"),
  );
  if (makePrivsepDir) mkdirSync(PRIVSEP_DIR, { mode: 0o755 });
  // -D: stay in the foreground, a child of the test run; -e: log to stderr (the log file)
  const sshd = processes.start({
    name: "git-sshd",
    binary: SSHD,
    args: ["-D", "-e", "-f", join(dir, "sshd_config")],
    logFile: join(dir, "sshd.log"),
    missingHint: "Run `bash hack/build-node.sh packages`.",
  });
  await sshd.waitReady(async () => (await banner(address, port)).startsWith("SSH-2.0-"), 10_000);
  const [type = "", key = ""] = readFileSync(`${hostKey}.pub`, "utf8").trim().split(" ");
  return {
    url: `ssh://root@${address}:${port}/${REPO}`,
    privateKey: readFileSync(clientKey, "utf8"),
    knownHosts: `[${address}]:${port} ${type} ${key}`,
  };
}

/** The first line a TCP server at address:port sends ("" if it sends none within a second). */
function banner(address: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port, timeout: 1_000 });
    let got = "";
    socket.on("data", (chunk: Buffer) => {
      got += chunk.toString("latin1");
      if (got.includes("\n")) socket.destroy();
    });
    socket.on("timeout", () => socket.destroy());
    socket.on("error", reject);
    socket.on("close", () => {
      resolve(got.split("\n")[0] ?? "");
    });
  });
}

/** Kills processes by id; those that already exited are skipped. */
function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
}

function removeEmptyDir(path: string): void {
  try {
    rmdirSync(path);
  } catch {
    /* not empty (someone else's sshd uses it) or gone */
  }
}

function listen(server: Server, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, address, () => {
      const bound = server.address();
      resolve(typeof bound === "object" && bound !== null ? bound.port : 0);
    });
  });
}
