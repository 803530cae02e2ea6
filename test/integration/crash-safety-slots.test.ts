import { StorageV1Api, type V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { LABELS } from "../../operator/src/api/keys.js";
import { jobResourceName } from "../../operator/src/api/names.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { eventually } from "../support/eventually.js";
import { FastRunner } from "../support/fast-runner.js";
import { testCluster } from "../support/global-cluster.js";
import { OperatorProcess } from "../support/operator-process.js";

const QUEUE = "slots";
const SLOTS = 3;
const JOBS = 7;
/** Long enough that the pod made before the crash still runs while the next operator hands out slots. */
const RUN_MS = 6_000;
const TERMINAL_POD = new Set(["Succeeded", "Failed"]);

/** The slot a pod runs in, read from what it really holds: the index at the end of its ReadWriteOnce cache claim. */
function claimSlot(pod: V1Pod): number | undefined {
  const claim = pod.spec?.volumes?.find((v) => v.persistentVolumeClaim)?.persistentVolumeClaim?.claimName;
  const index = claim === undefined ? undefined : /-(\d+)$/.exec(claim)?.[1];
  return index === undefined ? undefined : Number(index);
}

/**
 * The operator process dies (SIGKILL, at the `after-pod-create` fault point) right after creating a job's pod and
 * before the job's status records the slot that pod runs in. The next operator must still see that slot as taken:
 * otherwise it hands the slot, and so the same ReadWriteOnce cache claim, to a second job, and the queue runs above
 * its concurrency.
 */
describe("Crash safety of slots: an operator killed between creating a pod and recording its slot doubles no slot", function () {
  this.timeout(180_000);
  let s: BuildkiteScenario;
  let runner: FastRunner;
  let operator: OperatorProcess | undefined;
  let storage: StorageV1Api;
  let storageClass: string;
  const volumes: string[] = [];

  before(async () => {
    s = await BuildkiteScenario.start(testCluster().kubeConfig(), "bk-slots");
    runner = await FastRunner.start({
      kubeConfig: s.kc,
      namespaces: [s.t.namespace],
      fakeEndpoint: s.fake.agentEndpoint,
      durationMs: RUN_MS,
    });
    // The test cluster has no storage provisioner: static volumes of the test's own class let the cache claims bind,
    // so the pods are scheduled and run.
    storage = s.kc.makeApiClient(StorageV1Api);
    storageClass = `slots-${s.t.namespace}`;
    await storage.createStorageClass({
      body: {
        metadata: { name: storageClass },
        provisioner: "kubernetes.io/no-provisioner",
        volumeBindingMode: "Immediate",
      },
    });
    for (let i = 0; i < 2 * SLOTS; i++) {
      const name = `${storageClass}-${i}`;
      await s.t.core.createPersistentVolume({
        body: {
          metadata: { name },
          spec: {
            capacity: { storage: "1Gi" },
            accessModes: ["ReadWriteOnce"],
            storageClassName: storageClass,
            persistentVolumeReclaimPolicy: "Retain",
            hostPath: { path: `/tmp/${name}` },
          },
        },
      });
      volumes.push(name);
    }
  });
  after(async () => {
    await operator?.stop();
    await runner.stop();
    await s.stop();
    for (const name of volumes) await s.t.core.deletePersistentVolume({ name });
    await storage.deleteStorageClass({ name: storageClass });
  });

  it(`runs ${JOBS} jobs on ${SLOTS} slots across the crash: no two live pods ever share a slot, never more than ${SLOTS} run, each job runs once`, async () => {
    const flags = [
      "--leader-elect=false",
      "--poll-interval-ms=250",
      "--state-check-interval-ms=500",
      "--reservation-expiry-seconds=15",
      `--allowed-endpoints=${s.fake.agentEndpoint}`,
    ];
    await s.queue(QUEUE, "fast", {
      instanceShape: "LINUX_AMD64_2X4",
      maxVCPU: 2 * SLOTS,
      cache: [{ name: "work", size: "1Gi", mountPath: "/cache/work", storageClassName: storageClass }],
    });
    // One job first, so the pod made just before the crash is certainly the only one: its job holds a slot that
    // only the pod shows.
    const first = s.fake.seedJob({ queue_key: QUEUE, command: "true" });
    operator = OperatorProcess.start("slots-crash", flags, { BK_OPERATOR_FAULTS: "after-pod-create@1" });
    await operator.exit;
    const crashed = await s.t.pod(jobResourceName(first));
    expect(crashed, "the pod created just before the crash").to.not.equal(undefined);
    expect((await s.t.job(jobResourceName(first)))?.status?.slot, "the slot recorded before the crash").to.equal(
      undefined,
    );

    const uuids = [
      first,
      ...Array.from({ length: JOBS - 1 }, () => s.fake.seedJob({ queue_key: QUEUE, command: "true" })),
    ];
    operator = OperatorProcess.start("slots-after", flags);

    const violations: string[] = [];
    let peak = 0;
    const sample = async (): Promise<void> => {
      const pods = await s.t.core.listNamespacedPod({
        namespace: s.t.namespace,
        labelSelector: `${LABELS.queue}=${QUEUE}`,
      });
      const live = pods.items.filter((p) => !TERMINAL_POD.has(p.status?.phase ?? ""));
      peak = Math.max(peak, live.length);
      if (live.length > SLOTS)
        violations.push(`${live.length} live pods: ${live.map((p) => p.metadata?.name).join(", ")}`);
      const holders = new Map<number, string>();
      for (const pod of live) {
        const slot = claimSlot(pod);
        if (slot === undefined) continue;
        const other = holders.get(slot);
        if (other !== undefined) violations.push(`slot ${slot} held by ${other} and ${pod.metadata?.name ?? ""}`);
        holders.set(slot, pod.metadata?.name ?? "");
      }
    };
    await eventually(
      async () => {
        await sample();
        expect(
          uuids.filter((u) => s.fake.job(u).state !== "finished"),
          "jobs not finished in Buildkite",
        ).to.deep.equal([]);
      },
      { what: "every job finished", timeoutMs: 150_000, intervalMs: 50 },
    );

    expect([...new Set(violations)], "slot and concurrency violations").to.deep.equal([]);
    expect(peak, "most pods live at once").to.equal(SLOTS);
    const acquired = s.acquisitions();
    expect(
      uuids.filter((u) => acquired.get(u) !== 1),
      "jobs not acquired exactly once",
    ).to.deep.equal([]);
    expect(
      uuids.filter((u) => s.fake.job(u).exit_status !== 0),
      "jobs that did not succeed",
    ).to.deep.equal([]);
    expect(runner.stats().acquireFailures, "pods that tried to acquire a job already taken").to.equal(0);
    expect(
      (await s.t.job(jobResourceName(first)))?.status?.slot,
      "the slot of the job whose pod was made before the crash",
    ).to.equal(claimSlot(crashed ?? {}));
  });
});
