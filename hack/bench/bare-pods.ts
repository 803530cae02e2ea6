import { readFileSync } from "node:fs";
import { Agent, request } from "node:https";
import type { LocalCluster } from "../../test/support/cluster.js";
import { BENCH_USER } from "./audit.js";

/**
 * The ceiling of a run: what the same cluster does with bare pods and no operator. A minimal keep-alive HTTPS client
 * POSTs one-container pods, `concurrency` at a time, either all at once (burst, in flight) or each at its due time
 * (steady); KWOK binds nothing itself, so every pod goes through the real scheduler and KWOK's pod stages, as the job
 * pods of the other rows do.
 */

/** Requests in flight at once: the bare-pods client's only knob, the same in every run. */
export const BARE_CONCURRENCY = 32;

/** A bare pod: one container, small requests, labelled as a job's pod so the same watch times it. */
export function barePod(name: string): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, labels: { "buildkite.com/job-uuid": name, "bench/bare": "true" } },
    spec: {
      restartPolicy: "Never",
      terminationGracePeriodSeconds: 0,
      containers: [{ name: "main", image: "bench/bare:1", resources: { requests: { cpu: "100m", memory: "64Mi" } } }],
    },
  };
}

/** POSTs pods over a few keep-alive connections; each create resolves with its status code. */
export class BarePodClient {
  readonly #agent = new Agent({ keepAlive: true, maxSockets: BARE_CONCURRENCY });
  readonly #tls: { ca: Buffer; cert: Buffer; key: Buffer };

  constructor(
    private readonly cluster: LocalCluster,
    private readonly namespace: string,
  ) {
    const { pki } = cluster;
    this.#tls = { ca: readFileSync(pki.caCert), cert: readFileSync(pki.adminCert), key: readFileSync(pki.adminKey) };
  }

  create(name: string): Promise<number> {
    return this.#send("POST", `/api/v1/namespaces/${this.namespace}/pods`, JSON.stringify(barePod(name)));
  }

  /** Deletes every pod of the namespace in one request. */
  deleteAll(): Promise<number> {
    return this.#send("DELETE", `/api/v1/namespaces/${this.namespace}/pods?gracePeriodSeconds=0`, undefined);
  }

  close(): void {
    this.#agent.destroy();
  }

  #send(method: string, path: string, body: string | undefined): Promise<number> {
    const url = new URL(path, this.cluster.server);
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          agent: this.#agent,
          ...this.#tls,
          headers: {
            // The audit log (--by-client) tells the benchmark's requests by this.
            "user-agent": BENCH_USER,
            ...(body === undefined ? {} : { "content-type": "application/json" }),
          },
        },
        (res) => {
          res.resume();
          res.on("end", () => {
            resolve(res.statusCode ?? 0);
          });
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  }
}

/**
 * Creates `count` bare pods named `bare-<i>`, at most {@link BARE_CONCURRENCY} at a time, each no earlier than
 * `dueAt(i)`; returns when each was due (ms), the intended start that latencies are measured from.
 */
export async function postBarePods(
  client: BarePodClient,
  count: number,
  dueAt: (i: number) => number,
): Promise<Map<string, number>> {
  const due = new Map<string, number>();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      const at = dueAt(i);
      const wait = at - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const name = `bare-${String(i)}`;
      due.set(name, at);
      for (let attempt = 0; ; attempt++) {
        const status = await client.create(name);
        if (status < 300 || status === 409) break;
        // 429/5xx under load: again shortly, as a client-go client would.
        if (attempt >= 20) throw new Error(`bare pod ${name}: the API server answered ${String(status)} 20 times`);
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
      }
    }
  };
  await Promise.all(Array.from({ length: BARE_CONCURRENCY }, worker));
  return due;
}
