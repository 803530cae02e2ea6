import { CoreV1Api, RbacAuthorizationV1Api } from "@kubernetes/client-node";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildImages, type LocalImage, type NodeImages } from "../real-node/images.js";
import {
  cgroupHierarchies,
  claimHost,
  cleanupHost,
  run,
  waitExitedSync,
  type HostSnapshot,
} from "../real-node/host.js";
import {
  containerdConfig,
  crictlConfig,
  cniConfig,
  kubeletConfig,
  nodeKubeconfig,
  nodePaths,
  type NodePaths,
} from "../real-node/node-config.js";
import { hackBinary } from "./binaries.js";
import type { LocalCluster } from "./cluster.js";
import { httpGet } from "./https-probe.js";
import { ProcessGroup } from "./managed-process.js";
import { freePort } from "./ports.js";

/** Taint of the real node: only pods that tolerate it (tests that want a real kubelet) land there. */
export const REAL_NODE_TAINT = { key: "buildkite.test/real-node", value: "true", effect: "NoSchedule" } as const;
/** The toleration a pod (a queue's `podTemplate.tolerations`) needs to run on the real node. */
export const REAL_NODE_TOLERATION = {
  key: REAL_NODE_TAINT.key,
  operator: "Equal",
  value: "true",
  effect: "NoSchedule",
} as const;

/** Options for {@link RealNode.start}. */
export interface RealNodeOptions {
  /** Node name (default `real-<arch>-0`). */
  readonly name?: string;
  /** Register with {@link REAL_NODE_TAINT} (default true). */
  readonly taint?: boolean;
  /** The pod network, a /24 (default 10.250.0.0/24); its first address is the bridge, pods' gateway. */
  readonly subnet?: string;
  /** The OCI runtime containerd runs (default hack/bin/runc, built by hack/build-node.sh). */
  readonly runc?: string;
  /** Where progress lines go (default stderr). */
  readonly log?: (line: string) => void;
}

const BRIDGE = "bk-cni0";
const CNI_NETWORK = "bk-real-node";
const CGROUP_PARENT = "bk-operator-real-node";
const CNI_BIN_DIR = "/usr/lib/cni";
const NODE_BINARIES = ["kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl", "kube-router"];
const READY_TIMEOUT_MS = 60_000;

/** Checks what a real node needs before touching the host, each failure saying what to do. */
function preflight(): void {
  if (process.getuid?.() !== 0)
    throw new Error("a real node needs root (kubelet, containerd and iptables do); run the tests as root");
  const missing = NODE_BINARIES.filter((b) => !existsSync(hackBinary(b)));
  if (missing.length > 0)
    throw new Error(`the real node's binaries ${missing.join(", ")} are missing; run \`bash hack/build-node.sh\``);
  for (const plugin of ["bridge", "host-local", "loopback"]) {
    if (!existsSync(join(CNI_BIN_DIR, plugin)))
      throw new Error(
        `CNI plugin ${CNI_BIN_DIR}/${plugin} is missing; run \`bash hack/build-node.sh\` (apt-get install containernetworking-plugins)`,
      );
  }
  if (cgroupHierarchies().length === 0) throw new Error("no cgroup file system is mounted under /sys/fs/cgroup");
}

/**
 * A real Kubernetes node next to the KWOK ones: containerd (CRI, runc, CNI bridge), kubelet from the control plane's
 * own Kubernetes module, and kube-router enforcing NetworkPolicy, as processes of this test run with their logs in the
 * cluster's directory. Pods land here when they tolerate {@link REAL_NODE_TAINT}; their images are the locally built
 * pause, agent, step and service images (`hack/images/build.sh`), imported into containerd, so no registry is needed.
 * One per machine. {@link stop} removes every trace from the host (processes, mounts, bridge, iptables, cgroups,
 * settings).
 */
export class RealNode {
  #stopped = false;

  private constructor(
    readonly name: string,
    /** The pods' gateway: the bridge's address, which pods reach this host at (serve the fake Buildkite here). */
    readonly gatewayIp: string,
    readonly images: NodeImages,
    readonly paths: NodePaths,
    private readonly cluster: LocalCluster,
    private readonly processes: ProcessGroup,
    /** What the host looked like before the node started (clean-up and tests compare with it). */
    readonly snapshot: HostSnapshot,
    private readonly log: (line: string) => void,
  ) {}

  /** Starts containerd, kubelet and kube-router, imports the images, and waits until the node is Ready. */
  static async start(cluster: LocalCluster, options: RealNodeOptions = {}): Promise<RealNode> {
    const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    const started = Date.now();
    preflight();
    const images = await buildImages();
    const arch = process.arch === "x64" ? "amd64" : process.arch;
    const subnet = options.subnet ?? "10.250.0.0/24";
    const gatewayIp = subnet.replace(/\.0\/24$/, ".1");
    if (gatewayIp === subnet) throw new Error(`subnet ${subnet} is not a x.y.z.0/24 network`);
    const paths = nodePaths(join(cluster.dir, "node"));
    await mkdir(paths.cniConfDir, { recursive: true });
    const snapshot = claimHost(
      {
        nodeDir: paths.dir,
        containerdSocket: paths.containerdSocket,
        cgroupParent: CGROUP_PARENT,
        bridge: BRIDGE,
        cniNetwork: CNI_NETWORK,
      },
      log,
    );
    const node = new RealNode(
      options.name ?? `real-${arch}-0`,
      gatewayIp,
      images,
      paths,
      cluster,
      new ProcessGroup(),
      snapshot,
      log,
    );
    node.#forgetExitHook = installExitHook(() => {
      const components = ["kubelet", "kube-router", "containerd"].map((name) => node.processes.get(name));
      for (const component of components) component?.kill("SIGKILL");
      // before the cluster's own exit clean-up removes the directory they write to
      waitExitedSync(components.map((c) => c?.pid).filter((pid) => pid !== undefined));
      cleanupHost(snapshot);
    });
    try {
      await node.prepareHost(subnet, options.taint ?? true, options.runc ?? hackBinary("runc"));
      await node.startContainerd();
      await node.startKubelet();
      await node.startKubeRouter();
    } catch (err) {
      await node.stop().catch((cleanup: unknown) => {
        log(`real node: clean-up after the failed start: ${String(cleanup)}`);
      });
      throw err;
    }
    log(
      `real node ${node.name} ready in ${((Date.now() - started) / 1000).toFixed(1)} s (kubelet, containerd, kube-router; logs in ${paths.dir})`,
    );
    return node;
  }

  #forgetExitHook: () => void = () => undefined;

  private async prepareHost(subnet: string, taint: boolean, runc: string): Promise<void> {
    const p = this.paths;
    // kubelet's cgroupRoot must exist; on cgroup v1 a new cpuset cgroup also needs its CPUs and memory nodes.
    for (const hierarchy of cgroupHierarchies()) {
      const dir = join(hierarchy, CGROUP_PARENT);
      await mkdir(dir, { recursive: true });
      for (const file of ["cpuset.cpus", "cpuset.mems"]) {
        if (existsSync(join(hierarchy, file))) await writeFile(join(dir, file), readFileSync(join(hierarchy, file)));
      }
    }
    // The bridge exists before the first pod, so the pods' gateway address can be served from the start.
    await run("ip", ["link", "add", BRIDGE, "type", "bridge"]);
    await run("ip", ["addr", "add", `${this.gatewayIp}/24`, "dev", BRIDGE]);
    await run("ip", ["link", "set", BRIDGE, "up"]);
    const [port, healthzPort] = await Promise.all([freePort(), freePort()]);
    await Promise.all([
      writeFile(
        p.containerdConfig,
        containerdConfig(p, { runc, cniBinDir: CNI_BIN_DIR, sandboxImage: this.images.pause.ref }),
      ),
      writeFile(
        join(p.cniConfDir, "10-bk-real-node.conflist"),
        cniConfig(p, { name: CNI_NETWORK, bridge: BRIDGE, subnet, gateway: this.gatewayIp }),
      ),
      writeFile(
        p.kubeletConfig,
        kubeletConfig(p, {
          caCert: this.cluster.pki.caCert,
          port,
          healthzPort,
          cgroupRoot: CGROUP_PARENT,
          taints: taint ? [REAL_NODE_TAINT] : [],
        }),
      ),
      writeFile(p.crictlConfig, crictlConfig(p)),
      this.nodeCredentials(),
    ]);
  }

  /** A client certificate for `system:node:<name>` (group system:nodes) and RBAC's `system:node` role for it. */
  private async nodeCredentials(): Promise<void> {
    const { dir } = this.paths;
    const [key, csr, cert, ext] = ["kubelet.key", "kubelet.csr", "kubelet.crt", "kubelet.ext"].map((f) =>
      join(dir, f),
    ) as [string, string, string, string];
    await run("openssl", [
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      csr,
      "-subj",
      `/O=system:nodes/CN=system:node:${this.name}`,
    ]);
    await writeFile(ext, "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n");
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      csr,
      "-CA",
      this.cluster.pki.caCert,
      "-CAkey",
      this.cluster.pki.caKey,
      "-CAcreateserial",
      "-days",
      "30",
      "-out",
      cert,
      "-extfile",
      ext,
    ]);
    await writeFile(
      this.paths.kubeletKubeconfig,
      nodeKubeconfig(this.cluster.server, { ca: this.cluster.pki.caCert, cert, key }),
      { mode: 0o600 },
    );
    // The test cluster authorizes with RBAC only (no Node authorizer): bind the bootstrap role written for kubelets.
    await this.cluster
      .kubeConfig()
      .makeApiClient(RbacAuthorizationV1Api)
      .createClusterRoleBinding({
        body: {
          metadata: { name: `real-node-${this.name}` },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "system:node" },
          subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: `system:node:${this.name}` }],
        },
      });
  }

  private async startContainerd(): Promise<void> {
    const p = this.paths;
    const containerd = this.processes.start({
      name: "containerd",
      binary: hackBinary("containerd"),
      logFile: join(p.dir, "containerd.log"),
      args: ["--config", p.containerdConfig],
      // containerd finds its shim on PATH
      env: { ...process.env, PATH: `${hackBinary("")}:${process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin"}` },
      missingHint: "Run `bash hack/build-node.sh`.",
    });
    await containerd.waitReady(async () => (await this.ctr(["version"])).includes("Server:"), READY_TIMEOUT_MS);
    await Promise.all(
      Object.values(this.images).map((image: LocalImage) =>
        this.ctr(["-n", "k8s.io", "images", "import", image.tarball]),
      ),
    );
  }

  private async startKubelet(): Promise<void> {
    const p = this.paths;
    const kubelet = this.processes.start({
      name: "kubelet",
      binary: hackBinary("kubelet"),
      logFile: join(p.dir, "kubelet.log"),
      args: [
        `--config=${p.kubeletConfig}`,
        `--kubeconfig=${p.kubeletKubeconfig}`,
        `--hostname-override=${this.name}`,
        `--root-dir=${p.kubeletRoot}`,
        `--cert-dir=${join(p.kubeletRoot, "pki")}`,
        "--node-labels=type=real,buildkite.test/real-node=true",
        "--v=2",
      ],
      missingHint: "Run `bash hack/build-node.sh`.",
    });
    const core = this.cluster.kubeConfig().makeApiClient(CoreV1Api);
    await kubelet.waitReady(
      async () => {
        const node = await core.readNode({ name: this.name });
        return node.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;
      },
      READY_TIMEOUT_MS,
      "kubelet did not register a Ready node; its log says why.",
    );
  }

  private async startKubeRouter(): Promise<void> {
    const port = await freePort();
    const router = this.processes.start({
      name: "kube-router",
      binary: hackBinary("kube-router"),
      logFile: join(this.paths.dir, "kube-router.log"),
      args: [
        `--kubeconfig=${this.cluster.kubeconfigPath}`,
        `--hostname-override=${this.name}`,
        // only the NetworkPolicy firewall: the bridge CNI plugin wires pods, nothing proxies Services
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        `--health-port=${port}`,
        "--metrics-port=0",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--iptables-sync-period=1m",
        "--v=1",
      ],
      missingHint: "Run `bash hack/build-node.sh`.",
    });
    await router.waitReady(
      async () => (await httpGet(`http://127.0.0.1:${port}/healthz`)).status === 200,
      READY_TIMEOUT_MS,
    );
  }

  /** Runs `ctr` against this node's containerd. */
  ctr(args: readonly string[]): Promise<string> {
    return run(hackBinary("ctr"), ["--address", this.paths.containerdSocket, ...args]);
  }

  /** Runs `crictl` against this node's containerd. */
  crictl(args: readonly string[]): Promise<string> {
    return run(hackBinary("crictl"), ["--config", this.paths.crictlConfig, ...args]);
  }

  /**
   * The pod sandboxes containerd holds, by `namespace/name`: `SANDBOX_READY` while the pod runs, `SANDBOX_NOTREADY`
   * once its containers are stopped and its network torn down (kubelet removes it at its next garbage collection).
   */
  async sandboxes(): Promise<Map<string, string>> {
    const out = JSON.parse(await this.crictl(["pods", "-o", "json"])) as {
      items?: { state?: string; metadata?: { name?: string; namespace?: string } }[];
    };
    return new Map(
      (out.items ?? []).map((s) => [`${s.metadata?.namespace ?? ""}/${s.metadata?.name ?? ""}`, s.state ?? ""]),
    );
  }

  /** What a container of a pod printed, from kubelet's pod logs ("" once kubelet removed them with the pod). */
  containerLog(namespace: string, pod: string, container = "agent"): string {
    if (!existsSync(this.paths.podLogs)) return "";
    const dirs = readdirSync(this.paths.podLogs).filter((d) => d.startsWith(`${namespace}_${pod}_`));
    return dirs
      .flatMap((d) => {
        const dir = join(this.paths.podLogs, d, container);
        return existsSync(dir)
          ? readdirSync(dir)
              .sort()
              .map((f) => readFileSync(join(dir, f), "utf8"))
          : [];
      })
      .join("");
  }

  /**
   * Stops the node and removes every trace of it: kubelet first (so nothing restarts pods), then every pod sandbox
   * through CRI (containers stopped, network torn down), kube-router and containerd, then the host clean-up of
   * {@link cleanupHost}; finally the Node, its pods and its role binding leave the API. Fails listing what it could
   * not undo. Call it before {@link LocalCluster.stop}, which removes the directory the node lives in.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.processes.get("kubelet")?.stop(5_000);
    if (this.processes.get("containerd")?.running) {
      await this.crictl(["rmp", "--all", "--force"]).catch((err: unknown) => {
        this.log(`real node: crictl rmp: ${String(err)}`);
      });
    }
    await this.processes.stopAll(5_000);
    const problems = cleanupHost(this.snapshot);
    this.#forgetExitHook();
    await this.forgetInApi();
    if (problems.length > 0)
      throw new Error(`real node ${this.name} could not undo everything:\n${problems.join("\n")}`);
  }

  /** Removes the node's API objects (pods bound to it would otherwise stay Running forever). Best-effort. */
  private async forgetInApi(): Promise<void> {
    const kc = this.cluster.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    try {
      const pods = await core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${this.name}` });
      await Promise.all(
        pods.items.map((pod) =>
          core.deleteNamespacedPod({
            name: pod.metadata?.name ?? "",
            namespace: pod.metadata?.namespace ?? "",
            gracePeriodSeconds: 0,
          }),
        ),
      );
      await core.deleteNode({ name: this.name });
      await kc.makeApiClient(RbacAuthorizationV1Api).deleteClusterRoleBinding({ name: `real-node-${this.name}` });
    } catch (err) {
      this.log(`real node: removing ${this.name} from the API: ${String(err)}`);
    }
  }
}

/**
 * Runs `cleanup` if the test runner exits or is interrupted before {@link RealNode.stop}. Prepended, so it runs
 * before the cluster's own exit clean-up removes the directory the node's mounts live in. Returns the undo.
 */
function installExitHook(cleanup: () => void): () => void {
  let done = false;
  const once = (): void => {
    if (done) return;
    done = true;
    cleanup();
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  process.prependListener("exit", once);
  for (const signal of signals) process.prependListener(signal, once);
  return () => {
    done = true;
    process.off("exit", once);
    for (const signal of signals) process.off(signal, once);
  };
}
