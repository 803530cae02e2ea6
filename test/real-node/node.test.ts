import { CoreV1Api, type V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { availableParallelism } from "node:os";
import { eventually } from "../support/eventually.js";
import { testNamespace } from "../support/global-cluster.js";
import { KWOK_EXIT_CODE_ANNOTATION } from "../support/kwok.js";
import { KWOK_NODE_ANNOTATION } from "../support/nodes.js";
import { REAL_NODE_TAINT, REAL_NODE_TOLERATION } from "../support/real-node.js";
import { leftovers } from "./host.js";
import { startWorld, stopWorld, type World } from "./world.js";

describe("a real node (kubelet, containerd, runc, CNI bridge, kube-router) next to the KWOK nodes", function () {
  this.timeout(180_000);
  let world: World | undefined;
  let core: CoreV1Api;
  let namespace: string;

  before(async () => {
    world = await startWorld();
    core = world.cluster.kubeConfig().makeApiClient(CoreV1Api);
    namespace = await testNamespace(world.cluster.kubeConfig(), "real-node");
  });
  after(async () => {
    await stopWorld(world);
  });

  const w = (): World => {
    if (!world) throw new Error("no world");
    return world;
  };

  it("registers Ready with its real architecture, the test taint, kubelet of the control plane's version and containerd 2", async () => {
    const node = await core.readNode({ name: w().node.name });
    expect(node.metadata?.labels).to.include({
      "kubernetes.io/arch": "amd64",
      "kubernetes.io/os": "linux",
      type: "real",
    });
    expect(node.metadata?.annotations ?? {}, "KWOK's annotation").to.not.have.property(KWOK_NODE_ANNOTATION);
    expect(node.spec?.taints).to.deep.include(REAL_NODE_TAINT);
    expect(node.status?.nodeInfo).to.include({
      kubeletVersion: "v1.36.3",
      containerRuntimeVersion: "containerd://2.3.7",
      architecture: "amd64",
    });
    // kubelet reports the machine: its CPUs (the job shapes are sized to fit them)
    expect(node.status?.capacity).to.include({ cpu: String(availableParallelism()) });
    const kwok = (await core.listNode()).items.filter(
      (n) => n.metadata?.annotations?.[KWOK_NODE_ANNOTATION] === "fake",
    );
    expect(kwok.map((n) => n.metadata?.name)).to.deep.equal(["kwok-arm64-0"]);
  });

  it("runs a pod of the local agent image to completion with an address on the pod network; KWOK leaves it alone", async () => {
    const pod = probePod("hello", "echo hello-from-the-real-node; id -u; cat /etc/debian_version");
    await core.createNamespacedPod({ namespace, body: pod });
    const done = await eventually(
      async () => {
        const p = await core.readNamespacedPod({ name: "hello", namespace });
        expect(p.status?.phase, JSON.stringify(p.status)).to.equal("Succeeded");
        return p;
      },
      { timeoutMs: 60_000, what: "the pod to succeed on the real node" },
    );
    expect(done.spec?.nodeName).to.equal(w().node.name);
    expect(done.status?.podIP).to.match(/^10\.250\.0\.\d+$/);
    // KWOK would have ended it with exit 7 had it taken the pod
    expect(done.status?.containerStatuses?.[0]?.state?.terminated).to.include({ exitCode: 0, reason: "Completed" });
    const log = w().node.containerLog(namespace, "hello");
    expect(log)
      .to.include("hello-from-the-real-node")
      .and.match(/ 10000$/m);
  });

  it("stops a deleted pod: its containers end and its network is torn down", async () => {
    await core.createNamespacedPod({ namespace, body: probePod("sleeper", "sleep 600") });
    await eventually(
      async () => {
        expect((await core.readNamespacedPod({ name: "sleeper", namespace })).status?.phase).to.equal("Running");
      },
      { timeoutMs: 60_000, what: "the pod to run" },
    );
    expect((await w().node.sandboxes()).get(`${namespace}/sleeper`)).to.equal("SANDBOX_READY");
    await core.deleteNamespacedPod({ name: "sleeper", namespace, gracePeriodSeconds: 1 });
    await eventually(
      async () => {
        expect((await w().node.sandboxes()).get(`${namespace}/sleeper`) ?? "removed").to.be.oneOf([
          "SANDBOX_NOTREADY",
          "removed",
        ]);
      },
      { timeoutMs: 30_000, what: "kubelet to stop the pod's sandbox" },
    );
  });

  it("leaves nothing behind when stopped: processes, mounts, bridge, iptables chains, ipsets, cgroups, kernel settings", async () => {
    const { node } = w();
    await node.stop();
    expect(leftovers(node.snapshot)).to.deep.equal([]);
    const nodes = (await core.listNode()).items.map((n) => n.metadata?.name);
    expect(nodes).to.not.include(node.name);
  });

  function probePod(name: string, script: string): V1Pod {
    return {
      metadata: { name, annotations: { [KWOK_EXIT_CODE_ANNOTATION]: "7" } },
      spec: {
        restartPolicy: "Never",
        tolerations: [REAL_NODE_TOLERATION],
        nodeSelector: { "kubernetes.io/arch": "amd64" },
        automountServiceAccountToken: false,
        securityContext: {
          runAsNonRoot: true,
          runAsUser: 10000,
          runAsGroup: 10000,
          seccompProfile: { type: "RuntimeDefault" },
        },
        containers: [
          {
            name: "agent",
            image: w().node.images.agent.ref,
            command: ["bash", "-c", script],
            securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
          },
        ],
      },
    };
  }
});
