import { CoreV1Api, CustomObjectsApi, RequestContext, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { serviceAccountName } from "../../operator/src/api/names.js";
import { BUILDKITE_JOB } from "../../operator/src/api/generated/buildkite-job.js";
import { buildPod } from "../../operator/src/job/pod-builder.js";
import { FIELD_MANAGER } from "../../operator/src/kube/field-manager.js";
import { leanClients } from "../../operator/src/kube/lean-client.js";
import { copyOf, reuseConnections } from "../../operator/src/wiring.js";
import { LocalCluster } from "../../test/support/cluster.js";
import { installCrds } from "../../test/support/crds.js";
import { jobFixture, queueFixture } from "../../test/support/fixtures.js";
import { percentile, ProcessSampler } from "./measure.js";

/**
 * `node dist/hack/bench/client-cost.js [N] [ROUNDS]`: what one Kubernetes request costs this process's CPU, with
 * @kubernetes/client-node's generated clients, with the lean path (operator/src/kube/lean-client.ts: node:https,
 * HTTP/1.1 keep-alive) and with undici's `request` over the HTTP/2 dispatcher client-node shares per KubeConfig (the
 * alternative the lean path was measured against). Each round creates and deletes N job pods (as `buildPod` makes
 * them, uid precondition on delete) and N BuildkiteJobs on each path, 16 requests at a time (the operator's workers),
 * on a fresh local cluster; the paths take turns in a rotating order. Prints, per path, the median over the rounds of
 * this process's CPU (process.cpuUsage) per request, and the API server's (which includes the scheduler's and KWOK's
 * work on the pods, the same for every path).
 */

const CONCURRENCY = 16;
const NAMESPACE = "client-cost";
const QUEUE = queueFixture({}, "linux", NAMESPACE);
const { group, version, plural } = BUILDKITE_JOB;

/** The four requests measured, as each path sends them. */
interface Path {
  name: string;
  createPod(body: V1Pod): Promise<{ metadata?: { uid?: string } }>;
  deletePod(name: string, uid: string): Promise<unknown>;
  createJob(body: object): Promise<unknown>;
  deleteJob(name: string): Promise<unknown>;
}

function clientPath(name: string, core: CoreV1Api, custom: CustomObjectsApi): Path {
  const namespace = NAMESPACE;
  return {
    name,
    createPod: (body) => core.createNamespacedPod({ namespace, body, fieldManager: FIELD_MANAGER }),
    deletePod: (pod, uid) => core.deleteNamespacedPod({ name: pod, namespace, body: { preconditions: { uid } } }),
    createJob: (body) =>
      custom.createNamespacedCustomObject({ group, version, plural, namespace, body, fieldManager: FIELD_MANAGER }),
    deleteJob: (job) => custom.deleteNamespacedCustomObject({ group, version, plural, namespace, name: job }),
  };
}

/** undici's `request` on the dispatcher `applySecurityAuthentication` puts on the context: JSON in and out. */
function undiciPath(kc: KubeConfig): Path {
  const server = kc.getCurrentCluster()?.server ?? "";
  const send = async (
    method: "POST" | "DELETE",
    path: string,
    body: object,
  ): Promise<{ metadata?: { uid?: string } }> => {
    const ctx = new RequestContext(`${server}${path}`, method);
    await kc.applySecurityAuthentication(ctx);
    const dispatcher = ctx.getDispatcher();
    if (!dispatcher) throw new Error("client-node gave no dispatcher");
    const headers = { ...ctx.getHeaders(), accept: "application/json", "content-type": "application/json" };
    const res = await dispatcher.request({ origin: server, path, method, headers, body: JSON.stringify(body) });
    const text = await res.body.text();
    if (res.statusCode > 299) throw new Error(`${method} ${path}: ${String(res.statusCode)} ${text}`);
    return JSON.parse(text) as { metadata?: { uid?: string } };
  };
  const pods = `/api/v1/namespaces/${NAMESPACE}/pods`;
  const jobs = `/apis/${group}/${version}/namespaces/${NAMESPACE}/${plural}`;
  return {
    name: "undici request (HTTP/2)",
    createPod: (body) => send("POST", `${pods}?fieldManager=${FIELD_MANAGER}`, body),
    deletePod: (pod, uid) => send("DELETE", `${pods}/${pod}`, { preconditions: { uid } }),
    createJob: (body) => send("POST", `${jobs}?fieldManager=${FIELD_MANAGER}`, body),
    deleteJob: (job) => send("DELETE", `${jobs}/${job}`, {}),
  };
}

/** Runs `task(0..n-1)`, `CONCURRENCY` at a time. */
async function pool(n: number, task: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) await task(next++);
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

/** CPU ms per request of this process and of the API server, for one round of `path`. */
async function round(path: Path, tag: string, n: number, apiserver: number): Promise<{ own: number; api: number }> {
  const uuid = (i: number): string => `${tag}-0000-4000-8000-${i.toString(16).padStart(12, "0")}`;
  const jobs = Array.from({ length: n }, (_, i) => jobFixture(uuid(i), "linux", NAMESPACE));
  // Without the ownerReference to the job: its uid is the fixture's, and the garbage collector would delete the pod.
  const pods = jobs.map((job) => {
    const pod = buildPod(QUEUE, job);
    if (pod.metadata) pod.metadata.ownerReferences = [];
    return pod;
  });
  const bodies = jobs.map(({ apiVersion, kind, metadata, spec }) => ({
    apiVersion,
    kind,
    metadata: { name: metadata.name },
    spec,
  }));
  const uids: string[] = [];
  const sampler = new ProcessSampler([apiserver]);
  const start = process.cpuUsage();
  await pool(n, async (i) => (uids[i] = (await path.createPod(pods[i] as V1Pod)).metadata?.uid ?? ""));
  await pool(n, (i) => path.createJob(bodies[i] as object));
  await pool(n, (i) => path.deletePod(pods[i]?.metadata?.name ?? "", uids[i] ?? ""));
  await pool(n, (i) => path.deleteJob(bodies[i]?.metadata.name ?? ""));
  const used = process.cpuUsage(start);
  const api = sampler.stop().cpuSeconds * 1000;
  const requests = 4 * n;
  return { own: (used.user + used.system) / 1000 / requests, api: api / requests };
}

async function main(n: number, rounds: number): Promise<void> {
  const cluster = await LocalCluster.start();
  try {
    const admin = cluster.kubeConfig();
    await installCrds(admin);
    const core = admin.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
    // Job pods run as their queue's ServiceAccount, which admission wants to exist.
    await core.createNamespacedServiceAccount({
      namespace: NAMESPACE,
      body: { metadata: { name: serviceAccountName(QUEUE) } },
    });
    // Each path on a KubeConfig of its own, with connections shared as in the operator (wiring.ts).
    const kc = (): KubeConfig => {
      const copy = copyOf(admin);
      reuseConnections(copy);
      return copy;
    };
    const generated = kc();
    const paths = [
      clientPath(
        "client-node generated",
        generated.makeApiClient(CoreV1Api),
        generated.makeApiClient(CustomObjectsApi),
      ),
      (() => {
        const { core: c, custom } = leanClients(kc());
        return clientPath("lean (node:https, HTTP/1.1)", c, custom);
      })(),
      undiciPath(kc()),
    ];
    const apiserver = cluster.processes.get("kube-apiserver")?.pid ?? 0;
    const results = new Map(paths.map((p) => [p.name, [] as { own: number; api: number }[]]));
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < paths.length; k++) {
        const index = (r + k) % paths.length;
        const path = paths[index] as Path;
        const result = await round(
          path,
          `${r.toString(16).padStart(4, "0")}${index.toString(16).padStart(4, "0")}`,
          n,
          apiserver,
        );
        results.get(path.name)?.push(result);
        console.log(
          `round ${String(r + 1)} ${path.name}: ${result.own.toFixed(3)} ms/request, API server ${result.api.toFixed(3)}`,
        );
      }
    }
    console.log(`\nmedian of ${String(rounds)} rounds, ${String(4 * n)} requests each (CPU ms per request):`);
    for (const [name, rs] of results) {
      const own = percentile(
        rs.map((x) => x.own),
        50,
      );
      const api = percentile(
        rs.map((x) => x.api),
        50,
      );
      console.log(`  ${name.padEnd(30)} this process ${own.toFixed(3)}   API server ${api.toFixed(3)}`);
    }
  } finally {
    await cluster.stop();
  }
}

await main(Number(process.argv[2] ?? 500), Number(process.argv[3] ?? 3));
