import {
  ApiextensionsV1Api,
  AppsV1Api,
  AuthorizationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
  NetworkingV1Api,
  type V1PodSpec,
} from "@kubernetes/client-node";
import { expect } from "chai";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { jobTokenSecretName, serviceAccountName } from "../../operator/src/api/names.js";
import { isForbidden } from "../../operator/src/kube/field-manager.js";
import type { KubeClients } from "../../operator/src/kube/resources.js";
import { writeTokenSecret } from "../../operator/src/queue/source-support.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import {
  byKind,
  CHART_DIR,
  rbacDenialsIn,
  helm,
  releaseObjects,
  renderChart,
  startOperatorAs,
  valuesRefusal,
  writeServiceAccountKubeconfig,
  type ChartManifest,
} from "../support/chart.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import type { ManagedProcess } from "../support/managed-process.js";
import { TestObjects } from "../support/objects.js";
import { freePort } from "../support/ports.js";

const RESTRICTED = {
  "pod-security.kubernetes.io/enforce": "restricted",
  "pod-security.kubernetes.io/enforce-version": "latest",
};
const CRDS = ["buildkitequeues.buildkite.com", "buildkitejobs.buildkite.com"];

describe("Helm chart: lint, template and values schema", function () {
  this.timeout(60_000);

  it("passes helm lint --strict, with the optional monitors on and off", async () => {
    await helm(["lint", "--strict", CHART_DIR]);
    await helm([
      "lint",
      "--strict",
      CHART_DIR,
      "--set",
      "metrics.podMonitor.enabled=true",
      "--set",
      "metrics.serviceMonitor.enabled=true",
    ]);
  });

  it("renders a Pod Security restricted Deployment with probes, resources and the operator's flags", async () => {
    const [deployment] = byKind(await renderChart(), "Deployment");
    const spec = (deployment as unknown as { spec: { replicas: number; template: { spec: V1PodSpec } } }).spec;
    expect(spec.replicas).to.equal(2);
    const pod = spec.template.spec;
    expect(pod.securityContext).to.deep.include({ runAsNonRoot: true, seccompProfile: { type: "RuntimeDefault" } });
    const [c] = pod.containers;
    expect(c?.securityContext).to.deep.equal({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(c?.livenessProbe?.httpGet).to.deep.equal({ path: "/healthz", port: "http" });
    expect(c?.readinessProbe?.httpGet).to.deep.equal({ path: "/readyz", port: "http" });
    expect(c?.ports).to.deep.equal([{ name: "http", containerPort: 8080, protocol: "TCP" }]);
    expect(c?.resources).to.deep.equal({
      requests: { cpu: "100m", memory: "128Mi" },
      limits: { cpu: "1", memory: "512Mi" },
    });
    expect(c?.env?.[0]).to.deep.equal({
      name: "POD_NAMESPACE",
      valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } },
    });
    expect(c?.args).to.include.members([
      "--http-port=8080",
      "--leader-elect=true",
      "--lease-namespace=buildkite",
      "--lease-name=buildkite-operator",
      "--log-level=info",
      "--watch-namespaces=ci",
    ]);
  });

  it("renders the metrics Service and the Grafana dashboard; PodMonitor and ServiceMonitor only when turned on", async () => {
    const defaults = await renderChart();
    expect(byKind(defaults, "Service").map((m) => m.metadata.name)).to.deep.equal(["bk-buildkite-operator"]);
    const [dashboard] = byKind(defaults, "ConfigMap");
    expect((dashboard?.metadata as { labels?: Record<string, string> }).labels).to.include({ grafana_dashboard: "1" });
    const json = JSON.parse((dashboard?.data as Record<string, string>)["buildkite-operator.json"] ?? "{}") as {
      panels: { title: string }[];
    };
    expect(json.panels.map((p) => p.title)).to.include.members([
      "Jobs dispatched",
      "Jobs completed by result",
      "Queue wait",
      "Dispatch latency",
      "Slots used / capacity",
      "Requests by endpoint and status",
      "Reconcile errors",
      "Work-queue depth",
      "Informer restarts",
      "Leader",
    ]);
    expect(byKind(defaults, "PodMonitor").length + byKind(defaults, "ServiceMonitor").length).to.equal(0);
    const monitored = await renderChart(
      "--set",
      "metrics.podMonitor.enabled=true",
      "--set",
      "metrics.serviceMonitor.enabled=true",
    );
    expect(byKind(monitored, "PodMonitor")).to.have.length(1);
    expect(byKind(monitored, "ServiceMonitor")).to.have.length(1);
  });

  it("ships the CRDs of crds/ in the chart's crds/ (installed by Helm, never deleted by it)", async () => {
    const out = await helm(["show", "crds", CHART_DIR]);
    const names = parseAllDocuments(out)
      .map((d) => (d.toJS() as ChartManifest | null)?.metadata.name)
      .filter(Boolean);
    expect(names.sort()).to.deep.equal([...CRDS].sort());
  });

  it("refuses bad values with the schema's message, naming the value", async () => {
    expect(await valuesRefusal("--set", "replicaCount=0")).to.include("at '/replicaCount': minimum: got 0, want 1");
    expect(await valuesRefusal("--set", "logLevel=loud")).to.include(
      "at '/logLevel': value must be one of 'error', 'warn', 'info', 'debug'",
    );
    expect(await valuesRefusal("--set", "resources.limits.memory=lots")).to.include(
      "at '/resources/limits/memory': 'lots' does not match pattern",
    );
    expect(await valuesRefusal("--set-json", "image.repository=42")).to.include(
      "at '/image/repository': got number, want string",
    );
    expect(await valuesRefusal("--set", "replicas=3"), "a misspelt value").to.include(
      "additional properties 'replicas' not allowed",
    );
    expect(await valuesRefusal("--set", "logLevel=debug")).to.equal("");
  });
});

describe("Helm chart installed: the operator runs as the chart's ServiceAccount in the namespace it watches, and uninstall leaves only the CRDs", function () {
  this.timeout(180_000);
  const release = "bk-chart";
  let kc: KubeConfig;
  let releaseNs: string;
  /** Where the queue and its jobs live: the chart's watchNamespaces. */
  let t: TestObjects;
  /** A namespace the chart does not list. */
  let otherNs: string;
  let fake: FakeBuildkite;
  let operator: ManagedProcess | undefined;
  let logFile: string;

  /** A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token, as in the operator's pod). */
  const chartServiceAccountKubeconfig = (): Promise<string> =>
    writeServiceAccountKubeconfig(
      kc,
      join(testCluster().dir, "chart-operator.kubeconfig"),
      { namespace: releaseNs, name: "bk-chart-buildkite-operator" },
      testCluster().server,
      testCluster().pki.caCert,
    );
  const asChartServiceAccount = async (): Promise<KubeConfig> => {
    const config = new KubeConfig();
    config.loadFromFile(await chartServiceAccountKubeconfig());
    return config;
  };

  before(async () => {
    kc = testCluster().kubeConfig();
    releaseNs = await testNamespace(kc, "chart", RESTRICTED);
    t = new TestObjects(kc, await testNamespace(kc, "chart-jobs", RESTRICTED));
    otherNs = await testNamespace(kc, "chart-other");
    fake = await FakeBuildkite.start();
    logFile = join(testCluster().dir, "operator-chart.log");
  });
  after(async () => {
    await operator?.stop();
    await fake.stop();
    await helm(
      ["uninstall", release, "--namespace", releaseNs, "--ignore-not-found"],
      testCluster().kubeconfigPath,
    ).catch(() => undefined);
    await t.core.deleteNamespace({ name: releaseNs });
    await t.core.deleteNamespace({ name: t.namespace });
    await t.core.deleteNamespace({ name: otherNs });
  });

  it("installs the chart in its default, namespaced mode; its Deployment's pods pass Pod Security restricted admission", async () => {
    const installed = await helm(
      ["install", release, CHART_DIR, "--namespace", releaseNs, "--set-json", `watchNamespaces=["${t.namespace}"]`],
      testCluster().kubeconfigPath,
    );
    // NOTES.txt tells what to do next: the token Secret, then a queue, in the watched namespace.
    expect(installed)
      .to.include(`kubectl -n ${releaseNs} rollout status deployment/bk-chart-buildkite-operator`)
      .and.include(`serves queues in namespace(s) ${t.namespace} only`)
      .and.include(`kubectl create secret generic bk-agent-token -n ${t.namespace}`)
      .and.include("kind: BuildkiteQueue")
      .and.include("`helm uninstall` keeps them");
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    for (const name of CRDS) await ext.readCustomResourceDefinition({ name });
    expect(await releaseObjects(kc, release, releaseNs, [t.namespace])).to.deep.equal([
      "ClusterRole/bk-chart-buildkite-operator",
      "ClusterRoleBinding/bk-chart-buildkite-operator",
      "ConfigMap/bk-chart-buildkite-operator-dashboard",
      "Deployment/bk-chart-buildkite-operator",
      "Role/bk-chart-buildkite-operator",
      `Role/${t.namespace}/bk-chart-buildkite-operator-queues`,
      "RoleBinding/bk-chart-buildkite-operator",
      `RoleBinding/${t.namespace}/bk-chart-buildkite-operator-queues`,
      "Service/bk-chart-buildkite-operator",
      "ServiceAccount/bk-chart-buildkite-operator",
    ]);
    // A pod that breaks "restricted" is refused at creation: the ReplicaSet then reports FailedCreate and has no pods.
    const apps = kc.makeApiClient(AppsV1Api);
    await eventually(
      async () => {
        const pods = await t.core.listNamespacedPod({
          namespace: releaseNs,
          labelSelector: `app.kubernetes.io/instance=${release}`,
        });
        const sets = await apps.listNamespacedReplicaSet({ namespace: releaseNs });
        const failures = sets.items.flatMap((rs) => rs.status?.conditions ?? []).map((c) => c.message);
        expect(pods.items, `operator pods (ReplicaSet conditions: ${JSON.stringify(failures)})`).to.have.length(2);
      },
      { what: "the Deployment's two pods to be admitted" },
    );
  });

  it("confines the chart's ServiceAccount to the watched namespace: no Secret, pod or token anywhere else, kube-system included", async () => {
    const asOperator = await asChartServiceAccount();
    const authz = asOperator.makeApiClient(AuthorizationV1Api);
    // `kubectl auth can-i --as=system:serviceaccount:<release namespace>:bk-chart-buildkite-operator`, asked by the
    // ServiceAccount itself.
    const can = async (
      verb: string,
      resource: string,
      namespace: string,
      more: { subresource?: string; name?: string } = {},
    ): Promise<boolean> => {
      const review = await authz.createSelfSubjectAccessReview({
        body: { spec: { resourceAttributes: { verb, resource, namespace, ...more } } },
      });
      return review.status?.allowed ?? false;
    };
    // Together these would make it cluster-admin: read any Secret, run any pod, mint a token for any ServiceAccount.
    const escalations = async (namespace: string): Promise<Record<string, boolean>> => ({
      "get secrets": await can("get", "secrets", namespace),
      "create pods": await can("create", "pods", namespace),
      "create serviceaccounts/token": await can("create", "serviceaccounts", namespace, { subresource: "token" }),
    });
    const all = { "get secrets": true, "create pods": true, "create serviceaccounts/token": true };
    const none = { "get secrets": false, "create pods": false, "create serviceaccounts/token": false };
    expect(await escalations(t.namespace), `in the watched namespace ${t.namespace}`).to.deep.equal(all);
    for (const namespace of ["kube-system", "default", releaseNs, otherNs])
      expect(await escalations(namespace), `in namespace ${namespace}`).to.deep.equal(none);
    expect(await can("list", "secrets", ""), "list Secrets across namespaces").to.equal(false);
    expect(await can("list", "pods", ""), "list pods across namespaces").to.equal(false);
    // The one cluster-scoped read: kube-system's uid, the default cluster id.
    expect(await can("get", "namespaces", "", { name: "kube-system" })).to.equal(true);
    expect(await can("get", "namespaces", "", { name: otherNs })).to.equal(false);
    // And the API server enforces it: a token for kube-system's default ServiceAccount is refused.
    const refused = await asOperator
      .makeApiClient(CoreV1Api)
      .createNamespacedServiceAccountToken({
        name: "default",
        namespace: "kube-system",
        body: { spec: { audiences: [], expirationSeconds: 600 } },
      })
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(isForbidden(refused), `a TokenRequest in kube-system: ${String(refused)}`).to.equal(true);
  });

  it("runs a job to completion with only the chart's RBAC and leader election, without a single RBAC denial", async () => {
    const kubeconfig = await chartServiceAccountKubeconfig();
    const port = await freePort();
    operator = startOperatorAs(kubeconfig, logFile, [
      "--leader-elect=true",
      `--lease-namespace=${releaseNs}`,
      "--lease-name=buildkite-operator",
      `--http-port=${port}`,
      "--poll-interval-ms=250",
      "--state-check-interval-ms=500",
      `--allowed-endpoints=${fake.agentEndpoint}`,
      `--watch-namespaces=${t.namespace}`,
    ]);
    const failed = (what: string): string =>
      `${what}; RBAC denials in ${logFile}:\n${rbacDenialsIn(logFile).slice(0, 10).join("\n")}`;
    await eventually(
      async () => {
        expect((await httpGet(`http://127.0.0.1:${port}/readyz`)).status, failed("/readyz")).to.equal(200);
      },
      { what: "the operator's /readyz" },
    );
    const leases = kc.makeApiClient(CoordinationV1Api);
    await eventually(
      async () => {
        const lease = await leases.readNamespacedLease({ name: "buildkite-operator", namespace: releaseNs });
        expect(lease.spec?.holderIdentity, "the Lease holder").to.be.a("string").and.not.equal("");
        expect((await httpGet(`http://127.0.0.1:${port}/metrics`)).body).to.match(/^buildkite_operator_leader 1$/m);
      },
      { what: "the operator to take the leader Lease" },
    );

    await t.createTokenSecret("bk-agent-token", fake.agentToken);
    await t.createQueue("chart", { endpoint: fake.agentEndpoint, instanceShape: "LINUX_AMD64_2X4", maxVCPU: 4 });
    await eventually(
      async () => {
        const q = await t.queue("chart");
        expect(
          q?.status?.conditions?.find((c) => c.type === "Ready"),
          failed(`queue status ${JSON.stringify(q?.status)}`),
        ).to.include({ status: "True" });
      },
      { what: "queue chart Ready" },
    );
    const networking = kc.makeApiClient(NetworkingV1Api);
    const queue = await t.queue("chart");
    if (!queue) throw new Error("queue chart is gone");
    await t.core.readNamespacedServiceAccount({ name: serviceAccountName(queue), namespace: t.namespace });
    expect(
      (await networking.listNamespacedNetworkPolicy({ namespace: t.namespace })).items,
      "the queue's NetworkPolicy",
    ).to.have.length(1);

    const name = await t.createJob("chart");
    await t.jobWhen(name, "Running", (j) => {
      expect(j.status?.phase, failed(JSON.stringify(j.status))).to.equal("Running");
    });
    await t.exitPod(name, 0);
    const done = await t.jobWhen(name, "Succeeded", (j) => {
      expect(j.status?.phase).to.equal("Succeeded");
    });
    expect(done.status).to.include({ exitCode: 0, reason: "Completed" });
    await eventually(
      async () => {
        expect(await t.pod(name), "the job's pod").to.equal(undefined);
      },
      { what: "the finished pod to be deleted" },
    );
    await eventually(
      async () => {
        expect((await t.events(name)).map((e) => e.reason)).to.include("Succeeded");
      },
      { what: "the operator's Events on the job" },
    );

    // Still the leader it became (a leader that cannot renew exits), and it hands the Lease back on a graceful stop.
    expect(operator.running, operator.failure("exited before the test stopped it").message).to.equal(true);
    await operator.stop(20_000);
    const released = await leases.readNamespacedLease({ name: "buildkite-operator", namespace: releaseNs });
    expect(
      released.spec?.holderIdentity,
      `the Lease after a graceful stop; the operator's last lines:\n${operator.tail()}`,
    ).to.equal("");
    expect(
      rbacDenialsIn(logFile),
      "RBAC denials in the operator's log: a verb missing from the chart's roles",
    ).to.deep.equal([]);
  });

  it("refreshes a job's token Secret as the chart's ServiceAccount: created, then replaced with the new token", async () => {
    const asOperator = await asChartServiceAccount();
    const clients: KubeClients = {
      core: asOperator.makeApiClient(CoreV1Api),
      custom: asOperator.makeApiClient(CustomObjectsApi),
      objects: KubernetesObjectApi.makeApiClient(asOperator),
    };
    // A real BuildkiteJob: the Secret is owned by it, and the garbage collector deletes what an owner it cannot find.
    const name = await t.createJob("chart");
    const job = await t.job(name);
    if (!job) throw new Error(`job ${name} is gone`);
    const token = async (): Promise<string> => {
      const secret = await t.core.readNamespacedSecret({
        name: jobTokenSecretName(job.spec.uuid),
        namespace: t.namespace,
      });
      return Buffer.from(secret.data?.token ?? "", "base64").toString("utf8");
    };
    await writeTokenSecret(clients, job, "job-token-1");
    expect(await token(), "the Secret as first written (create)").to.equal("job-token-1");
    // The Secret exists now: AlreadyExists, then a replace, which RBAC authorizes as `update`.
    await writeTokenSecret(clients, job, "job-token-2");
    expect(await token(), "the Secret after a refresh (replace)").to.equal("job-token-2");
  });

  it("uninstalls every object of the release and keeps the CRDs (and so every queue and job)", async () => {
    await helm(["uninstall", release, "--namespace", releaseNs, "--wait"], testCluster().kubeconfigPath);
    await eventually(
      async () => {
        expect(await releaseObjects(kc, release, releaseNs, [t.namespace])).to.deep.equal([]);
      },
      { what: "the release's objects to be gone" },
    );
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    for (const name of CRDS) {
      const crd = await ext.readCustomResourceDefinition({ name });
      expect(crd.metadata?.deletionTimestamp, `CRD ${name}`).to.equal(undefined);
    }
    expect(await t.queue("chart"), "the queue, kept with its CRD").to.not.equal(undefined);
  });
});
