import type { V1PolicyRule, V1RoleBinding } from "@kubernetes/client-node";
import { expect } from "chai";
import { byKind, CHART_DIR, helm, renderChart, valuesRefusal, type ChartManifest } from "../support/chart.js";

/**
 * The operator's rules where it serves queues, verb for verb: a verb added or dropped must be a deliberate change
 * (each is used by the operator, see templates/_rbac.tpl). A Role in each watched namespace, or the ClusterRole.
 */
const QUEUE_RULES: V1PolicyRule[] = [
  { apiGroups: ["buildkite.com"], resources: ["buildkitequeues"], verbs: ["list", "watch", "patch"] },
  { apiGroups: ["buildkite.com"], resources: ["buildkitequeues/status"], verbs: ["patch"] },
  {
    apiGroups: ["buildkite.com"],
    resources: ["buildkitejobs"],
    verbs: ["get", "list", "watch", "create", "patch", "delete"],
  },
  { apiGroups: ["buildkite.com"], resources: ["buildkitejobs/status"], verbs: ["patch"] },
  { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch", "create", "delete"] },
  { apiGroups: [""], resources: ["pods/log"], verbs: ["get"] },
  { apiGroups: [""], resources: ["secrets"], verbs: ["get", "create", "update"] },
  { apiGroups: [""], resources: ["serviceaccounts"], verbs: ["list", "watch", "create", "patch"] },
  { apiGroups: [""], resources: ["serviceaccounts/token"], verbs: ["create"] },
  { apiGroups: [""], resources: ["persistentvolumeclaims"], verbs: ["get", "list", "watch", "create", "delete"] },
  { apiGroups: ["networking.k8s.io"], resources: ["networkpolicies"], verbs: ["list", "watch", "create", "patch"] },
  { apiGroups: [""], resources: ["events"], verbs: ["create", "patch"] },
];
/** The default cluster id (kube-system's uid): the only cluster-scoped read of namespaced mode. */
const CLUSTER_ID_RULE: V1PolicyRule = {
  apiGroups: [""],
  resources: ["namespaces"],
  resourceNames: ["kube-system"],
  verbs: ["get"],
};
const LEASE_RULES: V1PolicyRule[] = [
  { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"] },
  {
    apiGroups: ["coordination.k8s.io"],
    resources: ["leases"],
    resourceNames: ["buildkite-operator"],
    verbs: ["get", "update"],
  },
];
const OPERATOR_SA = { kind: "ServiceAccount", name: "bk-buildkite-operator", namespace: "buildkite" };

/** Each Role as `namespace/name` → its rules. */
const roles = (manifests: ChartManifest[]): Record<string, unknown> =>
  Object.fromEntries(
    byKind(manifests, "Role").map((r) => [`${r.metadata.namespace ?? ""}/${r.metadata.name}`, r.rules]),
  );
const operatorArgs = (manifests: ChartManifest[]): string[] =>
  (
    byKind(manifests, "Deployment")[0] as unknown as {
      spec: { template: { spec: { containers: { args: string[] }[] } } };
    }
  ).spec.template.spec.containers[0]?.args ?? [];

describe("Helm chart RBAC: namespaced by default, cluster-wide only when asked", function () {
  this.timeout(60_000);

  it("by default grants the operator's rules in the watched namespace only, and cluster-wide just kube-system's uid", async () => {
    const manifests = await renderChart();
    expect(roles(manifests)).to.deep.equal({
      "ci/bk-buildkite-operator-queues": QUEUE_RULES,
      "buildkite/bk-buildkite-operator": LEASE_RULES,
    });
    expect(byKind(manifests, "ClusterRole").map((r) => r.rules)).to.deep.equal([[CLUSTER_ID_RULE]]);
    expect(byKind(manifests, "ClusterRoleBinding")).to.have.length(1);
    const bindings = byKind(manifests, "RoleBinding") as unknown as V1RoleBinding[];
    expect(bindings.map((b) => `${b.metadata?.namespace ?? ""}/${b.roleRef.name}`)).to.have.members([
      "ci/bk-buildkite-operator-queues",
      "buildkite/bk-buildkite-operator",
    ]);
    for (const b of bindings) expect(b.subjects).to.deep.equal([OPERATOR_SA]);
    expect(operatorArgs(manifests)).to.include("--watch-namespaces=ci");
  });

  it("renders a Role and RoleBinding per watched namespace, and no ClusterRole at all when clusterId is set", async () => {
    const manifests = await renderChart("--set-json", 'watchNamespaces=["ci","ci-arm"]', "--set", "clusterId=prod-eu");
    expect(Object.keys(roles(manifests))).to.have.members([
      "ci/bk-buildkite-operator-queues",
      "ci-arm/bk-buildkite-operator-queues",
      "buildkite/bk-buildkite-operator",
    ]);
    expect(byKind(manifests, "RoleBinding")).to.have.length(3);
    expect(byKind(manifests, "ClusterRole").length + byKind(manifests, "ClusterRoleBinding").length).to.equal(0);
    expect(operatorArgs(manifests)).to.include.members(["--watch-namespaces=ci,ci-arm", "--cluster-id=prod-eu"]);
  });

  it("in cluster-wide mode (clusterWide: true) grants the same rules in every namespace and watches them all", async () => {
    await helm(["lint", "--strict", CHART_DIR, "--set", "clusterWide=true"]);
    const manifests = await renderChart("--set", "clusterWide=true");
    expect(byKind(manifests, "ClusterRole").map((r) => r.rules)).to.deep.equal([[...QUEUE_RULES, CLUSTER_ID_RULE]]);
    expect(byKind(manifests, "ClusterRoleBinding")).to.have.length(1);
    expect(roles(manifests), "only the leader Lease's Role").to.deep.equal({
      "buildkite/bk-buildkite-operator": LEASE_RULES,
    });
    expect(operatorArgs(manifests).filter((a) => a.startsWith("--watch-namespaces"))).to.deep.equal([]);
  });

  it("refuses a namespaced install without namespaces, and namespaces that are not names", async () => {
    expect(await valuesRefusal("--set-json", "watchNamespaces=[]")).to.include(
      "at '/watchNamespaces': minItems: got 0, want 1",
    );
    expect(await valuesRefusal("--set-json", 'watchNamespaces=["CI"]')).to.include(
      "at '/watchNamespaces/0': 'CI' does not match pattern",
    );
    expect(await valuesRefusal("--set-json", 'watchNamespaces=["ci","ci"]')).to.include(
      "at '/watchNamespaces': items at 0 and 1 are equal",
    );
    expect(
      await valuesRefusal("--set-json", "watchNamespaces=[]", "--set", "clusterWide=true"),
      "cluster-wide needs no list",
    ).to.equal("");
  });
});
