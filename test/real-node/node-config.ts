import { join } from "node:path";
import { stringify } from "yaml";

/** Where one real node keeps everything: configs, containerd's root and state, kubelet's root, logs. */
export interface NodePaths {
  readonly dir: string;
  readonly containerdConfig: string;
  readonly containerdSocket: string;
  readonly cniConfDir: string;
  readonly kubeletConfig: string;
  readonly kubeletKubeconfig: string;
  readonly kubeletRoot: string;
  readonly podLogs: string;
  readonly crictlConfig: string;
}

export function nodePaths(dir: string): NodePaths {
  return {
    dir,
    containerdConfig: join(dir, "containerd.toml"),
    // unix socket paths are limited to 108 bytes: keep this one short
    containerdSocket: join(dir, "containerd.sock"),
    cniConfDir: join(dir, "cni"),
    kubeletConfig: join(dir, "kubelet.yaml"),
    kubeletKubeconfig: join(dir, "kubelet.kubeconfig"),
    kubeletRoot: join(dir, "kubelet"),
    podLogs: join(dir, "pod-logs"),
    crictlConfig: join(dir, "crictl.yaml"),
  };
}

/**
 * containerd's configuration (format version 4, containerd 2.3): everything under the node's directory (root, state,
 * sockets, runc's state, network namespaces) so one clean-up of that directory removes it; the CRI plugin with the
 * locally built pause image as the sandbox image, runc from hack/bin and the node's CNI configuration.
 * `restrict_oom_score_adj`: the test VMs withhold CAP_SYS_RESOURCE, so runc cannot give the pause container the
 * -998 kubelet asks for ("failed to update /proc/self/oom_score_adj: Permission denied"); containerd then clamps each
 * request to its own score, as it does for rootless containerd.
 */
export function containerdConfig(
  p: NodePaths,
  opts: { runc: string; cniBinDir: string; sandboxImage: string },
): string {
  const q = (s: string): string => `'${s}'`;
  return `version = 4
root = ${q(join(p.dir, "containerd", "root"))}
state = ${q(join(p.dir, "containerd", "state"))}
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.erofs', 'io.containerd.snapshotter.v1.blockfile']

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = ${q(p.containerdSocket)}
  [plugins.'io.containerd.server.v1.ttrpc']
    address = ${q(`${p.containerdSocket}.ttrpc`)}
  [plugins.'io.containerd.internal.v1.opt']
    path = ${q(join(p.dir, "containerd", "opt"))}
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = ${q(opts.sandboxImage)}
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = ${q(opts.runc)}
          Root = ${q(join(p.dir, "containerd", "runc"))}
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [${q(opts.cniBinDir)}]
      conf_dir = ${q(p.cniConfDir)}
`;
}

/** The pod network: one Linux bridge with the gateway address, host-local addresses (state in the node's directory). */
export function cniConfig(
  p: NodePaths,
  net: { name: string; bridge: string; subnet: string; gateway: string },
): string {
  return JSON.stringify(
    {
      cniVersion: "1.0.0",
      name: net.name,
      plugins: [
        {
          type: "bridge",
          bridge: net.bridge,
          isGateway: true,
          hairpinMode: true,
          // No masquerade: pod traffic has nowhere to go but this host and the test's own namespaces.
          ipMasq: false,
          ipam: {
            type: "host-local",
            dataDir: join(p.dir, "cni-ipam"),
            ranges: [[{ subnet: net.subnet, gateway: net.gateway }]],
            routes: [{ dst: "0.0.0.0/0" }],
          },
        },
        { type: "loopback" },
      ],
    },
    null,
    2,
  );
}

/** Settings of {@link kubeletConfig}. */
export interface KubeletSettings {
  readonly caCert: string;
  readonly port: number;
  readonly healthzPort: number;
  readonly cgroupRoot: string;
  readonly taints: readonly { key: string; value: string; effect: string }[];
}

/**
 * kubelet's KubeletConfiguration: cgroupfs driver under its own cgroup root, cgroup v1 allowed (`failCgroupV1: false`:
 * kubelet 1.35+ refuses v1 otherwise), its APIs on loopback, registering with taints so only pods that tolerate them
 * land here, pod logs in the node's directory, image GC off (the images are imported, never pulled), and eviction
 * thresholds low enough that a busy test disk never evicts a job.
 */
export function kubeletConfig(p: NodePaths, s: KubeletSettings): string {
  return stringify({
    apiVersion: "kubelet.config.k8s.io/v1beta1",
    kind: "KubeletConfiguration",
    failCgroupV1: false,
    cgroupDriver: "cgroupfs",
    cgroupRoot: `/${s.cgroupRoot}`,
    containerRuntimeEndpoint: `unix://${p.containerdSocket}`,
    address: "127.0.0.1",
    port: s.port,
    readOnlyPort: 0,
    healthzBindAddress: "127.0.0.1",
    healthzPort: s.healthzPort,
    authentication: { anonymous: { enabled: false }, webhook: { enabled: false }, x509: { clientCAFile: s.caCert } },
    authorization: { mode: "AlwaysAllow" },
    registerWithTaints: s.taints,
    failSwapOn: false,
    podLogsDir: p.podLogs,
    serializeImagePulls: false,
    imageGCHighThresholdPercent: 100,
    evictionHard: {
      "memory.available": "100Mi",
      "nodefs.available": "1%",
      "imagefs.available": "1%",
      "nodefs.inodesFree": "1%",
    },
    resolvConf: "/etc/resolv.conf",
    // Pods are deleted by the operator as soon as they end; nothing to keep around.
    maxPods: 16,
  });
}

/** A kubeconfig for the kubelet, authenticating as `system:node:<name>` with a client certificate. */
export function nodeKubeconfig(server: string, tls: { ca: string; cert: string; key: string }): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "local", cluster: { server, "certificate-authority": tls.ca } }],
    users: [{ name: "node", user: { "client-certificate": tls.cert, "client-key": tls.key } }],
    contexts: [{ name: "local", context: { cluster: "local", user: "node" } }],
    "current-context": "local",
  });
}

/** crictl's configuration, so its commands need no endpoint flags and it does not look for /etc/crictl.yaml. */
export function crictlConfig(p: NodePaths): string {
  return stringify({
    "runtime-endpoint": `unix://${p.containerdSocket}`,
    "image-endpoint": `unix://${p.containerdSocket}`,
    timeout: 10,
  });
}
