import { NetworkingV1Api, type KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import { LABELS, MANAGED_BY } from "../../operator/src/api/keys.js";
import type { Operator } from "../../operator/src/operator.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { startTestOperator } from "../support/operator.js";

const OWNED = `${LABELS.managedBy}=${MANAGED_BY}`;

describe("--watch-namespaces: the operator serves the listed namespaces and never touches another (in-process, real control plane)", function () {
  this.timeout(90_000);
  let kc: KubeConfig;
  let operator: Operator | undefined;
  let watched: TestObjects;
  let other: TestObjects;
  let networking: NetworkingV1Api;

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    networking = kc.makeApiClient(NetworkingV1Api);
    watched = new TestObjects(kc, await testNamespace(kc, "watched"));
    other = new TestObjects(kc, await testNamespace(kc, "unwatched"));
    // The same queue, Secret and job in both: only the namespace differs.
    for (const t of [watched, other]) {
      await t.createTokenSecret();
      await t.createQueue("q", { instanceShape: "LINUX_AMD64_2X4", maxVCPU: 2 });
    }
    operator = await startTestOperator(kc, "watch-namespaces", { watchNamespaces: [watched.namespace] });
  });
  after(async () => {
    await operator?.stop();
    for (const t of [watched, other]) await t.core.deleteNamespace({ name: t.namespace });
  });

  it("runs the watched namespace's queue and job, and leaves the other namespace's queue, job and children alone", async () => {
    await eventually(
      async () => {
        const q = await watched.queue("q");
        expect(
          q?.status?.conditions?.find((c) => c.type === "Ready"),
          JSON.stringify(q?.status),
        ).to.include({ status: "True" });
      },
      { what: "the watched queue Ready" },
    );
    await watched.core.readNamespacedServiceAccount({ name: "bkq-q", namespace: watched.namespace });
    expect(
      (await networking.listNamespacedNetworkPolicy({ namespace: watched.namespace, labelSelector: OWNED })).items,
      "the watched queue's NetworkPolicy",
    ).to.have.length(1);
    const watchedJob = await watched.createJob("q");
    const otherJob = await other.createJob("q");
    await watched.jobWhen(watchedJob, "Running", (j) => {
      expect(j.status?.phase).to.equal("Running");
    });

    // By now the operator has reconciled everything it sees; the other namespace got nothing from it.
    expect((await other.queue("q"))?.status, "the other queue's status").to.equal(undefined);
    expect((await other.job(otherJob))?.status, "the other job's status").to.equal(undefined);
    expect(await other.pod(otherJob), "a pod for the other job").to.equal(undefined);
    expect(
      (await other.core.listNamespacedServiceAccount({ namespace: other.namespace, labelSelector: OWNED })).items,
      "ServiceAccounts made in the other namespace",
    ).to.deep.equal([]);
    expect(
      (await networking.listNamespacedNetworkPolicy({ namespace: other.namespace, labelSelector: OWNED })).items,
      "NetworkPolicies made in the other namespace",
    ).to.deep.equal([]);
    expect(
      (await other.core.listNamespacedPersistentVolumeClaim({ namespace: other.namespace, labelSelector: OWNED }))
        .items,
      "claims made in the other namespace",
    ).to.deep.equal([]);
    expect(await other.events("q"), "Events on the other queue").to.deep.equal([]);
    expect(await other.events(otherJob), "Events on the other job").to.deep.equal([]);
  });

  it("runs one informer per kind and watched namespace, all of them behind readiness", async () => {
    expect(operator?.notReady()).to.equal(undefined);
    const page = (await operator?.metrics.registry.metrics()) ?? "";
    // (A fresh cluster may refuse the first watch of a just-installed CRD, "storage is (re)initializing": a restart.)
    for (const kind of [
      "buildkitequeues",
      "buildkitejobs",
      "pods",
      "serviceaccounts",
      "networkpolicies",
      "persistentvolumeclaims",
    ]) {
      expect(page).to.match(
        new RegExp(
          `^buildkite_operator_informer_restarts_total\\{informer="${kind}/${watched.namespace}"\\} \\d+$`,
          "m",
        ),
      );
    }
    expect(page).to.not.match(/informer="pods"/);
  });
});
