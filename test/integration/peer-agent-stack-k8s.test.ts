import { BatchV1Api, CoreV1Api, type KubeConfig, type V1Container, type V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  PEER_RELEASE,
  PEER_VERSION,
  peerBinary,
  startAgentStackK8s,
  type Peer,
} from "../../hack/bench/peer-agent-stack-k8s.js";
import { FakeBuildkite } from "../fake-buildkite/server.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";

const QUEUE = "ask-peer-q";
const JOBS = 5;
const UUID_LABEL = "buildkite.com/job-uuid";

const built = peerBinary() !== undefined;
const title = `agent-stack-k8s ${PEER_RELEASE} as a benchmark peer (real control plane, KWOK, fake Buildkite)`;
/** `npm test` does not build the peer: without it the suite is skipped, and its title says how to build it. */
const suite = built ? describe : describe.skip;

suite(
  built
    ? title
    : `${title}: SKIPPED, agent-stack-k8s ${PEER_VERSION} is not built (bash hack/build-binaries.sh --with-peers)`,
  function () {
    this.timeout(120_000);
    let kc: KubeConfig;
    let core: CoreV1Api;
    let namespace = "";
    let dir = "";
    let fake: FakeBuildkite | undefined;
    let peer: Peer | undefined;
    const uuids: string[] = [];

    before(async () => {
      kc = testCluster().kubeConfig();
      core = kc.makeApiClient(CoreV1Api);
      namespace = await testNamespace(kc, "ask-peer");
      dir = await mkdtemp(join(tmpdir(), "ask-peer-"));
      fake = await FakeBuildkite.start();
      peer = await startAgentStackK8s({
        kubeconfigPath: testCluster().kubeconfigPath,
        namespace,
        agentEndpoint: fake.agentEndpoint,
        agentToken: fake.agentToken,
        queue: QUEUE,
        maxInFlight: 10,
        logFile: join(dir, "agent-stack-k8s.log"),
      });
    });
    after(async () => {
      await peer?.stop();
      await fake?.stop();
      if (namespace) await core.deleteNamespace({ name: namespace });
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    const fakeBuildkite = (): FakeBuildkite => {
      if (!fake) throw new Error("the fake Buildkite did not start");
      return fake;
    };
    const thePeer = (): Peer => {
      if (!peer) throw new Error("agent-stack-k8s did not start");
      return peer;
    };

    it("registers a kubernetes stack for its queue with the fake", () => {
      const stack = fakeBuildkite()
        .stacks()
        .find((s) => s.key === thePeer().stackKey);
      expect(stack, JSON.stringify(fakeBuildkite().stacks())).to.include({
        type: "kubernetes",
        cluster_queue_key: QUEUE,
        state: "connected",
      });
    });

    it("reserves 5 seeded jobs and creates a Kubernetes Job per job whose pod acquires that job with the fake's endpoint and token", async () => {
      for (let i = 0; i < JOBS; i++)
        uuids.push(fakeBuildkite().seedJob({ queue_key: QUEUE, command: `echo peer ${i}` }));

      // Reserved through batch-reserve: every job's history passes through `reserved` (it stays there: nobody runs the pods).
      await eventually(
        () => {
          for (const uuid of uuids) expect(fakeBuildkite().job(uuid).state, uuid).to.equal("reserved");
        },
        { what: "agent-stack-k8s to reserve every job" },
      );
      const reserveCalls = fakeBuildkite()
        .requests()
        .filter((r) => r.route === "stacks.batch-reserve" && r.status === 200);
      expect(reserveCalls, "batch-reserve calls").to.not.be.empty;

      const batch = kc.makeApiClient(BatchV1Api);
      const jobs = await eventually(
        async () => {
          const list = await batch.listNamespacedJob({ namespace, labelSelector: UUID_LABEL });
          expect(list.items.map((j) => j.metadata?.labels?.[UUID_LABEL]).sort()).to.deep.equal([...uuids].sort());
          return list.items;
        },
        { what: `${JOBS} Kubernetes Jobs labelled with the job uuids` },
      );
      for (const job of jobs) {
        expect(job.metadata?.name).to.equal(`buildkite-${job.metadata?.labels?.[UUID_LABEL] ?? ""}`);
        expect(job.metadata?.labels).to.include({ "buildkite.com/controller-id": thePeer().stackKey });
      }

      // The real Job controller makes each pod, the scheduler binds it, KWOK makes it Running.
      const pods = await eventually(
        async () => {
          const list = await core.listNamespacedPod({ namespace, labelSelector: UUID_LABEL });
          expect(list.items, "pods").to.have.length(JOBS);
          for (const pod of list.items) expect(pod.status?.phase, pod.metadata?.name).to.equal("Running");
          return list.items;
        },
        { what: `${JOBS} Running pods` },
      );
      for (const pod of pods) expectAcquires(pod, fakeBuildkite().agentEndpoint, thePeer().tokenSecret);
      expect(pods.map((p) => agentEnv(p, "BUILDKITE_AGENT_ACQUIRE_JOB")?.value).sort()).to.deep.equal(
        [...uuids].sort(),
      );

      const secret = await core.readNamespacedSecret({ name: thePeer().tokenSecret, namespace });
      expect(Buffer.from(secret.data?.BUILDKITE_AGENT_TOKEN ?? "", "base64").toString("utf8")).to.equal(
        fakeBuildkite().agentToken,
      );
    });

    it("deregisters its stack when stopped", async () => {
      await thePeer().stop();
      expect(
        fakeBuildkite()
          .stacks()
          .find((s) => s.key === thePeer().stackKey)?.state,
      ).to.equal("disconnected");
    });
  },
);

function agentContainer(pod: V1Pod): V1Container {
  const agent = pod.spec?.containers.find((c) => c.name === "agent");
  if (!agent) throw new Error(`pod ${pod.metadata?.name ?? "?"} has no agent container`);
  return agent;
}

function agentEnv(pod: V1Pod, name: string): { value?: string; secret?: { name: string; key: string } } | undefined {
  const env = agentContainer(pod).env?.find((e) => e.name === name);
  if (!env) return undefined;
  const ref = env.valueFrom?.secretKeyRef;
  return {
    ...(env.value === undefined ? {} : { value: env.value }),
    ...(ref ? { secret: { name: ref.name ?? "", key: ref.key } } : {}),
  };
}

/** The pod's agent acquires the job its Job is labelled with, from the fake, with the token of the peer's Secret. */
function expectAcquires(pod: V1Pod, endpoint: string, tokenSecret: string): void {
  const name = pod.metadata?.name ?? "?";
  expect(agentEnv(pod, "BUILDKITE_AGENT_ACQUIRE_JOB")?.value, name).to.equal(pod.metadata?.labels?.[UUID_LABEL]);
  expect(agentEnv(pod, "BUILDKITE_AGENT_ENDPOINT")?.value, name).to.equal(endpoint);
  expect(agentEnv(pod, "BUILDKITE_AGENT_TOKEN")?.secret, name).to.deep.equal({
    name: tokenSecret,
    key: "BUILDKITE_AGENT_TOKEN",
  });
  expect(agentEnv(pod, "BUILDKITE_AGENT_PING_MODE")?.value, name).to.equal("poll-only");
}
