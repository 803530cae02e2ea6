import { createServer, type Server } from "node:net";

/**
 * A gate jobs wait at, so a test can read what was installed for a running pod before the job goes on: a TCP server
 * on an address the pods reach (the pods' gateway) that answers a job's key with `wait` until {@link open}, then
 * `open`.
 */
export class Gate {
  private constructor(
    private readonly server: Server,
    private readonly opened: Set<string>,
    readonly host: string,
    readonly port: number,
  ) {}

  static async start(host: string): Promise<Gate> {
    const opened = new Set<string>();
    const server = createServer((socket) => {
      let buffer = "";
      socket.setEncoding("utf8");
      socket.on("data", (chunk: string) => {
        buffer += chunk;
        const newline = buffer.indexOf("\n");
        if (newline >= 0) socket.end(opened.has(buffer.slice(0, newline).trim()) ? "open\n" : "wait\n");
      });
      socket.on("error", () => undefined);
    });
    const port = await new Promise<number>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, host, () => {
        const address = server.address();
        resolve(typeof address === "object" && address !== null ? address.port : 0);
      });
    });
    return new Gate(server, opened, host, port);
  }

  /** Bash that waits (about two minutes at most) until the gate is open for `key`. */
  wait(key: string): string {
    return `for i in $(seq 1 400); do
  [ "$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && echo "$3" >&3 && head -n 1 <&3' _ ${this.host} ${String(this.port)} ${key} 2>/dev/null)" = open ] && break
  sleep 0.3
done`;
  }

  open(key: string): void {
    this.opened.add(key);
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) =>
      this.server.close(() => {
        resolve();
      }),
    );
  }
}
