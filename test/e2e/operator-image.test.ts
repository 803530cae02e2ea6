import { CoordinationV1Api, type KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { GenericContainer, Wait, type StartedTestContainer } from "testcontainers";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { repoRoot } from "../support/binaries.js";
import { CHART_DIR, helm, rbacDenials, writeServiceAccountKubeconfig } from "../support/chart.js";
import { LocalCluster } from "../support/cluster.js";
import { eventually } from "../support/eventually.js";
import { testNamespace } from "../support/global-cluster.js";
import { httpGet } from "../support/https-probe.js";
import { TestObjects } from "../support/objects.js";
import { freePort } from "../support/ports.js";

const run = promisify(execFile);
const IMAGE = "bk-operator-test/operator:e2e";
const RESTRICTED = {
  "pod-security.kubernetes.io/enforce": "restricted",
  "pod-security.kubernetes.io/enforce-version": "latest",
};
const KUBECONFIG_IN_CONTAINER = "/etc/buildkite-operator/kubeconfig";

/**
 * A container run the way the chart's securityContext runs the pod: read-only root filesystem (testcontainers has no
 * builder method for it), every capability dropped, no privilege escalation, a small writable /tmp.
 */
class RestrictedContainer extends GenericContainer {
  constructor(image: string) {
    super(image);
    this.hostConfig.ReadonlyRootfs = true;
    this.withDroppedCapabilities("ALL")
      .withSecurityOpt("no-new-privileges")
      .withTmpFs({ "/tmp": "rw,noexec,nosuid,size=64m" });
  }
}

describe("The operator's container image: built without a registry, run as the chart's ServiceAccount", function () {
  this.timeout(300_000);
  let cluster: LocalCluster;
  let kc: KubeConfig;
  let fake: FakeBuildkite;
  let dir: string;
  let container: StartedTestContainer | undefined;
  let port: number;
  /** The namespace the queue and its jobs live in: the chart's watchNamespaces, the operator's --watch-namespaces. */
  let t: TestObjects;
  const logs: string[] = [];

  before(async () => {
    // The real build script, as a release would run it; dist/ is already compiled (the tests run from it).
    await run("bash", [join(repoRoot, "hack", "build-image.sh"), IMAGE], {
      cwd: repoRoot,
      maxBuffer: 16 * 1024 * 1024,
    }).catch((err: unknown) => {
      const e = err as { stdout?: string; stderr?: string };
      throw new Error(`hack/build-image.sh failed:\n${(e.stdout ?? "").slice(-3000)}${(e.stderr ?? "").slice(-3000)}`, {
        cause: err,
      });
    });
    [cluster, fake, dir, port] = await Promise.all([
      LocalCluster.start(),
      FakeBuildkite.start(),
      mkdtemp(join(tmpdir(), "bk-operator-image-")),
      freePort(),
    ]);
    kc = cluster.kubeConfig();
  });
  afterEach(function () {
    if (this.currentTest?.state === "failed")
      process.stderr.write(`\nLast lines of the operator container's log:\n${logs.slice(-40).join("\n")}\n`);
  });
  after(async () => {
    await container?.stop();
    await fake.stop();
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("starts from the image with only the chart's RBAC, as uid 65532 on a read-only root, and answers /healthz and /readyz", async () => {
    // The chart brings the CRDs (this cluster is fresh) and the ServiceAccount with its Roles: in its default,
    // namespaced mode, rights only in the jobs' namespace, which must exist first.
    const releaseNs = await testNamespace(kc, "operator", RESTRICTED);
    t = new TestObjects(kc, await testNamespace(kc, "image-jobs", RESTRICTED));
    await helm(
      [
        "install",
        "bk",
        CHART_DIR,
        "--namespace",
        releaseNs,
        "--set",
        "replicaCount=1",
        "--set-json",
        `watchNamespaces=["${t.namespace}"]`,
      ],
      cluster.kubeconfigPath,
    );
    const kubeconfig = await writeServiceAccountKubeconfig(
      kc,
      join(dir, "kubeconfig"),
      { namespace: releaseNs, name: "bk-buildkite-operator" },
      cluster.server,
      cluster.pki.caCert,
    );

    container = await new RestrictedContainer(IMAGE)
      // Host networking: the API server and the fake Buildkite listen on this machine's loopback.
      .withNetworkMode("host")
      .withBindMounts([{ source: kubeconfig, target: KUBECONFIG_IN_CONTAINER, mode: "ro" }])
      .withEnvironment({ KUBECONFIG: KUBECONFIG_IN_CONTAINER, POD_NAMESPACE: releaseNs })
      .withCommand([
        "--log-level=debug",
        "--leader-elect=false",
        `--http-port=${port}`,
        "--poll-interval-ms=250",
        "--state-check-interval-ms=500",
        `--allowed-endpoints=${fake.agentEndpoint}`,
        `--watch-namespaces=${t.namespace}`,
      ])
      .withLogConsumer((stream) => {
        stream.on("data", (chunk: Buffer | string) => logs.push(...chunk.toString().split("\n").filter(Boolean)));
      })
      .withWaitStrategy(Wait.forLogMessage(/Serving \/healthz/))
      .withStartupTimeout(60_000)
      .start();

    expect((await httpGet(`http://127.0.0.1:${port}/healthz`)).status).to.equal(200);
    await eventually(
      async () => {
        expect((await httpGet(`http://127.0.0.1:${port}/readyz`)).status).to.equal(200);
      },
      { what: "the container's /readyz", timeoutMs: 60_000 },
    );
    const uid = await container.exec(["/usr/local/bin/node", "-e", "process.stdout.write(String(process.getuid()))"]);
    expect(uid.output.trim(), "the uid the operator runs as").to.equal("65532");
    const metrics = (await httpGet(`http://127.0.0.1:${port}/metrics`)).body;
    expect(metrics, "without leader election the single replica leads").to.match(/^buildkite_operator_leader 1$/m);
    const leases = await kc.makeApiClient(CoordinationV1Api).listNamespacedLease({ namespace: releaseNs });
    expect(leases.items, "Leases with --leader-elect=false").to.deep.equal([]);
  });

  it("runs a job to completion: queue Ready, pod created, exit recorded, pod deleted", async function () {
    if (!container) this.skip();
    await t.createTokenSecret("bk-agent-token", fake.agentToken);
    await t.createQueue("image", { endpoint: fake.agentEndpoint, instanceShape: "LINUX_ARM64_2X4", maxVCPU: 2 });
    await eventually(
      async () => {
        const q = await t.queue("image");
        expect(
          q?.status?.conditions?.find((c) => c.type === "Ready"),
          JSON.stringify(q?.status),
        ).to.include({ status: "True" });
      },
      { what: "queue image Ready" },
    );
    const name = await t.createJob("image");
    await t.jobWhen(name, "Running", (j) => {
      expect(j.status?.phase, JSON.stringify(j.status)).to.equal("Running");
    });
    await t.exitPod(name, 0);
    const done = await t.jobWhen(name, "Succeeded", (j) => {
      expect(j.status?.phase).to.equal("Succeeded");
    });
    expect(done.status).to.include({ exitCode: 0, reason: "Completed" });
    await eventually(
      async () => {
        expect(await t.pod(name)).to.equal(undefined);
      },
      { what: "the finished pod to be deleted" },
    );
    await eventually(
      async () => {
        expect((await httpGet(`http://127.0.0.1:${port}/metrics`)).body).to.match(
          /^buildkite_operator_jobs_completed_total\{[^}]*result="Succeeded"[^}]*\} 1$/m,
        );
      },
      { what: "the completed job in /metrics" },
    );
    expect(rbacDenials(logs), "RBAC denials in the container's log").to.deep.equal([]);
  });
});
