import type { V1PersistentVolumeClaim, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { jobFixture, queueFixture } from "../../../test/support/fixtures.js";
import type { BuildkiteJob, BuildkiteJobStatus } from "../api/generated/buildkite-job.js";
import type { BuildkiteQueueSpec } from "../api/generated/buildkite-queue.js";
import { seatOf, type Seat } from "../capacity/queue-capacity.js";
import { surplusCacheClaims } from "./cache-claims.js";
import { buildPod } from "../job/pod-builder.js";
import { desiredCacheClaims } from "./children.js";

const gomod = { name: "gomod", size: "20Gi", mountPath: "/c", scope: "Pipeline" as const };
const queueOf = (spec: Partial<BuildkiteQueueSpec> = {}) =>
  queueFixture({ instanceShape: "LINUX_AMD64_4X16", maxVCPU: 8, cache: [gomod], ...spec });

let seq = 0;
function job(pipelineSlug: string, status?: BuildkiteJobStatus): BuildkiteJob {
  const j = jobFixture(`c0000000-0000-4000-8000-${String(++seq).padStart(12, "0")}`);
  j.spec.pipelineSlug = pipelineSlug;
  if (status) j.status = status;
  return j;
}
/** The claim a job of `pipeline` in `slot` mounts. */
function claimOf(pipeline: string, slot: number, queue = queueOf()): V1PersistentVolumeClaim {
  const claim = desiredCacheClaims(queue, job(pipeline), slot)[0];
  if (!claim) throw new Error("no claim");
  return claim;
}
const podMounting = (claim: V1PersistentVolumeClaim): V1Pod => ({
  spec: {
    containers: [],
    volumes: [{ name: "cache-gomod", persistentVolumeClaim: { claimName: claim.metadata?.name ?? "" } }],
  },
});
const nameOf = (c: V1PersistentVolumeClaim) => c.metadata?.name ?? "";
/** A job as capacity sees it, without a pod unless `hasPod`. */
const seat = (j: BuildkiteJob, hasPod = false): Seat => ({ ...seatOf(j, undefined), hasPod });
const decide = (
  claims: V1PersistentVolumeClaim[],
  opts: { queue?: ReturnType<typeof queueOf>; jobs?: Seat[]; pods?: V1Pod[] } = {},
) => {
  const queue = opts.queue ?? queueOf();
  return surplusCacheClaims({
    queue,
    claims,
    capacity: { limits: queue.spec, seats: opts.jobs ?? [], expectedJobs: [] },
    pods: opts.pods ?? [],
  });
};

describe("surplusCacheClaims", () => {
  it("keeps every scope's claims below the slot limit, idle or not: they are the cache", () => {
    expect(decide([claimOf("web", 0), claimOf("web", 1), claimOf("deploy", 0)])).to.deep.equal({
      remove: [],
      kept: [],
    });
  });

  it("removes claims of slots at or above the limit (lower maxVCPU, larger shape) and of removed caches", () => {
    const high = claimOf("web", 2);
    const low = claimOf("web", 1);
    expect(decide([low, high])).to.deep.equal({ remove: [nameOf(high)], kept: [] });
    expect(decide([low, high], { queue: queueOf({ maxVCPU: 4 }) }).remove).to.deep.equal([nameOf(low), nameOf(high)]);
    expect(decide([low], { queue: queueOf({ cache: [] }) }).remove).to.deep.equal([nameOf(low)]);
  });

  it("removes unscoped claims made before caches had scopes", () => {
    const legacy: V1PersistentVolumeClaim = {
      metadata: { name: "bkq-linux-gomod-0", labels: { "buildkite.com/queue": "linux", "buildkite.com/slot": "0" } },
    };
    expect(decide([legacy]).remove).to.deep.equal(["bkq-linux-gomod-0"]);
  });

  it("keeps a surplus claim while a pod mounts it or a job of its scope holds its slot", () => {
    const high = claimOf("web", 3);
    expect(decide([high], { pods: [podMounting(high)] })).to.deep.equal({ remove: [], kept: [nameOf(high)] });
    const holder = seat(job("web", { phase: "Pending", slot: 3, shape: "LINUX_AMD64_4X16" }));
    expect(decide([high], { jobs: [holder] })).to.deep.equal({ remove: [], kept: [nameOf(high)] });
    const otherSlot = seat(job("web", { phase: "Running", slot: 0, shape: "LINUX_AMD64_4X16" }), true);
    const otherScope = seat(job("deploy", { phase: "Pending", slot: 3, shape: "LINUX_AMD64_4X16" }));
    expect(decide([high], { jobs: [otherSlot, otherScope] }).remove).to.deep.equal([nameOf(high)]);
  });

  it("keeps a surplus claim while a job of its scope has no slot yet (its claim is made before its pod and its slot)", () => {
    const high = claimOf("web", 3);
    const starting = seat(job("web", { phase: "Pending", reason: "WaitingForSlot" }));
    expect(decide([high], { jobs: [starting] }).kept).to.deep.equal([nameOf(high)]);
    const assigned = seatOf(job("web"), undefined, { kind: "assigned", slot: 3 });
    expect(decide([high], { jobs: [assigned] }).kept).to.deep.equal([nameOf(high)]);
    const ended = seat(job("web", { phase: "Failed", reason: "PodRejected" }));
    expect(decide([high], { jobs: [ended, seat(job("deploy"))] }).remove).to.deep.equal([nameOf(high)]);
  });

  it("keeps a surplus claim for a job whose slot only its pod records (the status write after the pod was lost)", () => {
    const high = claimOf("web", 3);
    const crashed = job("web", { phase: "Pending" });
    const pod = buildPod(queueOf(), crashed, 3);
    expect(decide([high], { jobs: [seatOf(crashed, pod)] })).to.deep.equal({ remove: [], kept: [nameOf(high)] });
  });

  it("keeps a removed cache's claim for a job of its scope, whichever scope kind the cache had", () => {
    const branchQueue = queueOf({ cache: [{ ...gomod, scope: "Branch" }] });
    const claim = desiredCacheClaims(branchQueue, job("web"), 0)[0];
    if (!claim) throw new Error("no claim");
    const holder = seat(job("web", { phase: "Running", slot: 0, shape: "LINUX_AMD64_4X16" }), true);
    expect(decide([claim], { queue: queueOf({ cache: [] }), jobs: [holder] }).kept).to.deep.equal([nameOf(claim)]);
  });

  it("keeps the slot indexes of a smaller shape while its jobs run, and removes them after", () => {
    // 2X4 → 4X16 with maxVCPU 8: a 2X4 job still runs, so indexes up to 3 may still be handed out.
    const running = seat(job("web", { phase: "Running", slot: 0, shape: "LINUX_AMD64_2X4" }), true);
    const three = claimOf("web", 3);
    expect(decide([three], { jobs: [running] }).remove).to.deep.equal([]);
    const ended = seat(job("web", { phase: "Succeeded", slot: 0, shape: "LINUX_AMD64_2X4" }));
    expect(decide([three], { jobs: [ended] }).remove).to.deep.equal([nameOf(three)]);
  });

  it("leaves alone claims being deleted and claims of other queues", () => {
    const deleting = claimOf("web", 5);
    if (deleting.metadata) deleting.metadata.deletionTimestamp = new Date();
    const other = claimOf("web", 5, queueFixture({ cache: [gomod] }, "other"));
    expect(decide([deleting, other])).to.deep.equal({ remove: [], kept: [] });
  });
});
