import { CoreV1Api, KubeConfig, RbacAuthorizationV1Api } from "@kubernetes/client-node";
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startApiServer, startControllers, startEtcd } from "./control-plane.js";
import { eventually } from "./eventually.js";
import { startKwok } from "./kwok.js";
import { onExit, ProcessGroup } from "./managed-process.js";
import { DEFAULT_NODE_POOLS, registerNodes, type NodePoolSpec } from "./nodes.js";
import { generatePki, type Pki } from "./pki.js";
import { writeKubeconfig } from "./kubeconfig.js";

/** Options for {@link LocalCluster.start}. */
export interface ClusterOptions {
  nodePools?: readonly NodePoolSpec[];
  /** Keep the cluster's directory (logs, etcd data) after stop, for debugging. Also `BK_KEEP_CLUSTER=1`. */
  keepDir?: boolean;
  /** Where progress lines go (default stderr). */
  log?: (line: string) => void;
  /**
   * Extra kube-scheduler flags. The benchmarks lift its client-side rate limit (`--kube-api-qps=5000
   * --kube-api-burst=5000`, as kwokctl's benchmark mode does) so that the scheduler's default of 50 requests/s does not
   * set the pace; tests keep the defaults a real cluster has.
   */
  schedulerArgs?: readonly string[];
  /** Extra kube-apiserver flags (the benchmarks' audit log); kept across {@link LocalCluster.restartApiServer}. */
  apiServerArgs?: readonly string[];
}

/**
 * A real Kubernetes control plane as local processes on loopback: etcd, kube-apiserver, kube-controller-manager,
 * kube-scheduler and KWOK with fake amd64 and arm64 nodes. Start once per test run; every test gets a namespace.
 */
export class LocalCluster {
  private constructor(
    readonly dir: string,
    readonly pki: Pki,
    readonly server: string,
    readonly kubeconfigPath: string,
    readonly nodeNames: readonly string[],
    readonly processes: ProcessGroup,
    readonly keepDir: boolean,
    private readonly forgetCleanup: () => void,
    private readonly restartInfo: { etcdUrl: string; port: number; args: readonly string[] },
  ) {}

  /**
   * Stops kube-apiserver (every watch and request fails meanwhile), keeps it down for `downMs`, and starts it again
   * on the same address: what a control-plane upgrade or crash looks like to the operator.
   */
  async restartApiServer(downMs = 0): Promise<void> {
    await this.processes.get("kube-apiserver")?.stop(2_000);
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    const { etcdUrl, port, args } = this.restartInfo;
    await startApiServer(this.dir, this.processes, this.pki, etcdUrl, port, args);
  }

  /** Starts every component, registers the nodes and waits until they are Ready. Prints the time to ready. */
  static async start(options: ClusterOptions = {}): Promise<LocalCluster> {
    const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    const started = Date.now();
    const dir = await mkdtemp(join(tmpdir(), "bk-operator-cluster-"));
    const processes = new ProcessGroup();
    const keep = options.keepDir ?? process.env.BK_KEEP_CLUSTER === "1";
    // an interrupted run (Ctrl-C, a killed test runner) still removes the cluster's directory
    const forgetCleanup = keep
      ? () => undefined
      : onExit(() => {
          rmSync(dir, { recursive: true, force: true });
        });
    try {
      const [pki, etcd] = await Promise.all([generatePki(dir), startEtcd(dir, processes)]);
      const apiserver = await startApiServer(dir, processes, pki, etcd.url, undefined, options.apiServerArgs);
      const kubeconfigPath = await writeKubeconfig(join(dir, "kubeconfig"), apiserver.url, {
        ca: pki.caCert,
        cert: pki.adminCert,
        key: pki.adminKey,
      });
      const restart = { etcdUrl: etcd.url, port: apiserver.port, args: options.apiServerArgs ?? [] };
      const cluster = new LocalCluster(
        dir,
        pki,
        apiserver.url,
        kubeconfigPath,
        [],
        processes,
        keep,
        forgetCleanup,
        restart,
      );
      const core = cluster.kubeConfig().makeApiClient(CoreV1Api);
      const [, nodeNames] = await Promise.all([
        startControllers(dir, processes, pki, kubeconfigPath, options.schedulerArgs),
        // nodes first: KWOK's node-initialize stage copies the capacity they were registered with
        registerNodes(core, options.nodePools ?? DEFAULT_NODE_POOLS).then(async (names) => {
          await startKwok(dir, processes, kubeconfigPath);
          return names;
        }),
        cluster.publishIssuerDiscovery(),
      ]);
      const ready = new LocalCluster(
        dir,
        pki,
        apiserver.url,
        kubeconfigPath,
        nodeNames,
        processes,
        keep,
        forgetCleanup,
        restart,
      );
      await ready.waitForNodesReady(core);
      log(
        `local cluster ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${nodeNames.length} nodes, kubeconfig ${kubeconfigPath}`,
      );
      return ready;
    } catch (err) {
      await processes.stopAll(1_000);
      if (!keep) await rm(dir, { recursive: true, force: true });
      forgetCleanup();
      throw err;
    }
  }

  /** A client configuration for the cluster's admin (system:masters). */
  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromFile(this.kubeconfigPath);
    return kc;
  }

  /**
   * Lets anyone read the issuer's discovery document and keys, as a public OIDC provider (EKS's) does, so an STS
   * can verify projected ServiceAccount tokens without credentials of its own.
   */
  private async publishIssuerDiscovery(): Promise<void> {
    const rbac = this.kubeConfig().makeApiClient(RbacAuthorizationV1Api);
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: "test-service-account-issuer-discovery-public" },
        roleRef: {
          apiGroup: "rbac.authorization.k8s.io",
          kind: "ClusterRole",
          name: "system:service-account-issuer-discovery",
        },
        subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "Group", name: "system:unauthenticated" }],
      },
    });
  }

  private async waitForNodesReady(core: CoreV1Api): Promise<void> {
    try {
      await eventually(
        async () => {
          const nodes = await core.listNode();
          const notReady = nodes.items.filter(
            (n) => n.status?.conditions?.find((c) => c.type === "Ready")?.status !== "True",
          );
          if (notReady.length > 0 || nodes.items.length < this.nodeNames.length) {
            throw new Error(`nodes not Ready: ${notReady.map((n) => n.metadata?.name ?? "?").join(", ")}`);
          }
        },
        { timeoutMs: 30_000, what: "KWOK to mark the nodes Ready" },
      );
    } catch (err) {
      throw this.processes.get("kwok")?.failure("did not make the nodes Ready", String(err)) ?? err;
    }
    // The ServiceAccount admission plugin refuses pods until the namespace's `default` ServiceAccount exists.
    await eventually(() => core.readNamespacedServiceAccount({ name: "default", namespace: "default" }), {
      timeoutMs: 30_000,
      what: "kube-controller-manager to create the default ServiceAccount",
    });
  }

  /** Stops every component (reverse start order) and removes the cluster's directory unless asked to keep it. */
  async stop(): Promise<void> {
    await this.processes.stopAll();
    if (!this.keepDir) await rm(this.dir, { recursive: true, force: true });
    this.forgetCleanup();
  }
}
