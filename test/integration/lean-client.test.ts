import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  RbacAuthorizationV1Api,
  type CoreV1Api as Core,
  type CustomObjectsApi,
  type V1Pod,
} from "@kubernetes/client-node";
import { expect } from "chai";
import { Registry } from "prom-client";
import { BUILDKITE_JOB } from "../../operator/src/api/generated/buildkite-job.js";
import {
  apiMessage,
  createRefusal,
  FIELD_MANAGER,
  isAlreadyExists,
  isConflict,
  isNotFound,
} from "../../operator/src/kube/field-manager.js";
import { leanClients, type LeanTransport } from "../../operator/src/kube/lean-client.js";
import { annotate, deleteCustomObject, patchStatus } from "../../operator/src/kube/resources.js";
import { guardWrites, NotLeaderError } from "../../operator/src/kube/write-guard.js";
import { EventRecorder } from "../../operator/src/kube/event-recorder.js";
import { Metrics } from "../../operator/src/observability/metrics.js";
import { createLogger } from "../../operator/src/observability/logger.js";
import { copyOf, countRequests, reuseConnections } from "../../operator/src/wiring.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { FakeClock } from "../support/fake-clock.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";

const pod = (name: string): V1Pod => ({
  metadata: { name, labels: { app: "lean" } },
  spec: { containers: [{ name: "c", image: "busybox" }], terminationGracePeriodSeconds: 0 },
});
const job = (name: string, uuid: string) => ({
  apiVersion: `${BUILDKITE_JOB.group}/${BUILDKITE_JOB.version}`,
  kind: "BuildkiteJob",
  metadata: { name },
  spec: { queueRef: { name: "linux" }, uuid },
});

/** The error `write` fails with; fails the test if it succeeds. */
async function failure(write: () => Promise<unknown>): Promise<unknown> {
  try {
    await write();
  } catch (err) {
    return err;
  }
  throw new Error("the request succeeded");
}

/** The metav1.Status an ApiException carries as its body text. */
function statusOf(err: unknown): { kind?: string; reason?: string; code?: number } {
  expect(err).to.be.instanceOf(ApiException);
  const body = (err as ApiException<unknown>).body;
  expect(body).to.be.a("string");
  return JSON.parse(body as string) as { kind?: string; reason?: string; code?: number };
}

/** Lean clients on a copy of `kc`, hooked as the operator hooks its own (`hook`), with connections shared. */
function lean(kc: KubeConfig, hook: (kc: KubeConfig) => void = () => undefined) {
  const copy = copyOf(kc);
  hook(copy);
  reuseConnections(copy);
  return leanClients(copy);
}

/**
 * The lean request path (kube/lean-client.ts) against the real API server: the operator's hot requests round-trip,
 * fail as client-node's ApiException with the API server's Status, and still pass through the KubeConfig's
 * authentication hook that counts requests and guards writes.
 */
describe("Lean request path: the hot requests against a real API server", function () {
  this.timeout(60_000);
  let kc: KubeConfig;
  let admin: CoreV1Api;
  let namespace: string;
  let core: Core;
  let custom: CustomObjectsApi;
  let transport: LeanTransport | undefined;

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    admin = kc.makeApiClient(CoreV1Api);
    namespace = await testNamespace(kc, "lean");
    ({ core, custom, transport } = lean(kc));
  });
  after(async () => {
    transport?.close();
    await admin.deleteNamespace({ name: namespace });
  });

  it("creates, reads and deletes a pod (uid precondition), as plain JSON with the field manager", async () => {
    const created = await core.createNamespacedPod({ namespace, body: pod("p1"), fieldManager: FIELD_MANAGER });
    expect(created.metadata?.uid).to.be.a("string");
    expect(created.metadata?.managedFields?.map((f) => f.manager)).to.deep.equal([FIELD_MANAGER]);
    // Date-time fields stay as the API server wrote them.
    expect(created.metadata?.creationTimestamp).to.be.a("string");
    const read = await core.readNamespacedPod({ name: "p1", namespace });
    expect(read.metadata?.uid).to.equal(created.metadata?.uid);
    expect(Object.keys(core).sort()).to.deep.equal([
      "createNamespacedEvent",
      "createNamespacedPod",
      "createNamespacedSecret",
      "deleteNamespacedPod",
      "patchNamespacedEvent",
      "readNamespacedPod",
    ]);
    // The generated methods are still there, on the same object.
    expect((await core.listNamespacedPod({ namespace })).items.map((p) => p.metadata?.name)).to.deep.equal(["p1"]);

    const wrongUid = await failure(() =>
      core.deleteNamespacedPod({ name: "p1", namespace, body: { preconditions: { uid: "not-its-uid" } } }),
    );
    expect(isConflict(wrongUid)).to.equal(true);
    expect(statusOf(wrongUid).reason).to.equal("Conflict");
    const uid = created.metadata?.uid ?? "";
    const deleted = await core.deleteNamespacedPod({ name: "p1", namespace, body: { preconditions: { uid } } });
    expect(deleted.metadata?.uid).to.equal(uid);
  });

  it("throws 404, 409 and 422 as client-node's ApiException with the API server's Status as the body", async () => {
    const missing = await failure(() => core.readNamespacedPod({ name: "nope", namespace }));
    expect(isNotFound(missing)).to.equal(true);
    expect(statusOf(missing)).to.include({ kind: "Status", reason: "NotFound", code: 404 });
    expect(apiMessage(missing)).to.equal('pods "nope" not found');

    const secret = { metadata: { name: "token" }, stringData: { token: "t" } };
    await core.createNamespacedSecret({ namespace, body: secret, fieldManager: FIELD_MANAGER });
    const twice = await failure(() => core.createNamespacedSecret({ namespace, body: secret }));
    expect(isAlreadyExists(twice)).to.equal(true);
    expect(statusOf(twice).reason).to.equal("AlreadyExists");

    const invalid = await failure(() => core.createNamespacedPod({ namespace, body: pod("Not_A_Name") }));
    expect(statusOf(invalid)).to.include({ reason: "Invalid", code: 422 });
    expect(createRefusal(invalid)).to.equal("refused");
  });

  it("creates, reads, patches (merge patch, status subresource) and deletes a BuildkiteJob", async () => {
    const { group, version, plural } = BUILDKITE_JOB;
    const body = job("bkj-lean", "0190a8f4-52c1-4b8e-9d4a-3f1c2b7e6a10");
    const created = (await custom.createNamespacedCustomObject({
      group,
      version,
      plural,
      namespace,
      body,
      fieldManager: FIELD_MANAGER,
    })) as { metadata: { uid: string }; spec: { priority: number } };
    expect(created.spec.priority).to.equal(0);
    expect(Object.keys(custom).sort()).to.deep.equal([
      "createNamespacedCustomObject",
      "deleteNamespacedCustomObject",
      "getNamespacedCustomObject",
      "patchNamespacedCustomObject",
      "patchNamespacedCustomObjectStatus",
    ]);
    const clients = { core, custom, objects: undefined as never };
    await annotate(clients, BUILDKITE_JOB, namespace, "bkj-lean", { "example.com/a": "1" });
    await patchStatus(clients, BUILDKITE_JOB, namespace, "bkj-lean", { phase: "Pending" });
    const read = (await custom.getNamespacedCustomObject({ group, version, plural, namespace, name: "bkj-lean" })) as {
      metadata: { uid: string; annotations?: Record<string, string> };
      status?: { phase?: string };
    };
    expect(read.metadata.uid).to.equal(created.metadata.uid);
    expect(read.metadata.annotations).to.deep.equal({ "example.com/a": "1" });
    expect(read.status?.phase).to.equal("Pending");

    const invalid = await failure(() =>
      custom.createNamespacedCustomObject({ group, version, plural, namespace, body: job("bkj-bad", "not-a-uuid") }),
    );
    expect(statusOf(invalid)).to.include({ reason: "Invalid", code: 422 });

    await deleteCustomObject(clients, BUILDKITE_JOB, namespace, "bkj-lean");
    const gone = await failure(() =>
      custom.getNamespacedCustomObject({ group, version, plural, namespace, name: "bkj-lean" }),
    );
    expect(isNotFound(gone)).to.equal(true);
  });

  it("records Events: a create, then merge patches of the count", async () => {
    const clock = new FakeClock(new Date("2026-01-01T00:00:00Z"));
    const logger = createLogger("error");
    const recorder = new EventRecorder({ core, component: "lean-test", clock, logger });
    const target = { apiVersion: "v1", kind: "Pod", metadata: { name: "p-events", namespace } };
    recorder.record(target, "Normal", "Tested", "once");
    await recorder.flush();
    recorder.record(target, "Normal", "Tested", "once");
    await recorder.flush();
    const events = (await admin.listNamespacedEvent({ namespace })).items.filter((e) => e.reason === "Tested");
    expect(events.map((e) => e.count)).to.deep.equal([2]);
  });

  it("passes every request through the authentication hook: counted, and writes refused when not the leader", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    let leading = false;
    const guarded = lean(kc, (copy) => {
      countRequests(copy, metrics);
      guardWrites(copy, () => leading);
    });
    try {
      const refused = await failure(() => guarded.core.createNamespacedPod({ namespace, body: pod("p-guard") }));
      expect(refused).to.be.instanceOf(NotLeaderError);
      expect(isNotFound(await failure(() => guarded.core.readNamespacedPod({ name: "p-guard", namespace })))).to.equal(
        true,
      );
      leading = true;
      await guarded.core.createNamespacedPod({ namespace, body: pod("p-guard") });
      const metric = metrics.registry.getSingleMetric("buildkite_operator_kubernetes_requests_total");
      const counted = await metric?.get();
      const byMethod = Object.fromEntries(
        counted?.values.map((v) => [String(v.labels.method), v.value] as const) ?? [],
      );
      expect(byMethod).to.deep.equal({ POST: 2, GET: 1 });
    } finally {
      guarded.transport?.close();
    }
  });

  it("authenticates with a bearer token read afresh for every request", async () => {
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    const token = async (name: string): Promise<string> => {
      await admin.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
      const request = { name, namespace, body: { spec: { audiences: [] } } };
      return (await admin.createNamespacedServiceAccountToken(request)).status?.token ?? "";
    };
    const [nobody, editor] = [await token("nobody"), await token("editor")];
    await rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: "editor" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "edit" },
        subjects: [{ kind: "ServiceAccount", name: "editor", namespace }],
      },
    });
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("no cluster in the kubeconfig");
    const user = new KubeConfig();
    const as = (token: string): void => {
      user.loadFromOptions({
        clusters: [cluster],
        users: [{ name: "sa", token }],
        contexts: [{ name: "sa", cluster: cluster.name, user: "sa" }],
        currentContext: "sa",
      });
    };
    as(nobody);
    const { core: asUser, transport: userTransport } = leanClients(user);
    try {
      const denied = await failure(() => asUser.createNamespacedPod({ namespace, body: pod("p-token") }));
      expect(createRefusal(denied)).to.equal("denied");
      as(editor);
      // The API server's RBAC cache may take a moment to see the new RoleBinding.
      const created = await eventually(() => asUser.createNamespacedPod({ namespace, body: pod("p-token") }), {
        what: "the editor's token to be allowed to create a pod",
      });
      expect(created.metadata?.name).to.equal("p-token");
    } finally {
      userTransport?.close();
    }
  });
});
