import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { randomBytes } from "node:crypto";
import { jobResourceName, jobTokenSecretName } from "../../operator/src/api/names.js";
import { eventually } from "../support/eventually.js";
import { GitServer } from "../support/git-server.js";
import { SERVICE_MARKER, STEP_IMAGE_MARKER } from "./images.js";
import { RealNodeScenario } from "./scenario.js";
import {
  describePod,
  inBash,
  KUBERNETES_PLUGIN,
  nodeContainers,
  reported,
  rot,
  SEARCH_CONTROL_FILE,
  serviceProcesses,
  SIDECAR_CLIENT,
  tokenSearch,
} from "./steps.js";
import { startWorld, stopWorld, type World } from "./world.js";

/** A step as Buildkite describes it: its command, `image:` and plugins. */
interface Step {
  readonly queue_key: string;
  readonly command: string;
  readonly image?: string;
  readonly plugins?: readonly Record<string, unknown>[];
  readonly repo?: string;
}

/**
 * A queue that checks out (field names as the operator accepts them; adjust here if they change): `checkout` replaces
 * the `skip: true` that {@link RealNodeScenario.queue} sets by default.
 */
function checkoutQueue(checkout: Record<string, unknown>): Record<string, unknown> {
  return { checkout };
}

/** Every container of a pod, init containers (copy-agent, sidecars) first, by name. */
function containersOf(pod: V1Pod): Map<string, V1Container> {
  return new Map([...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].map((c) => [c.name, c]));
}

/** A line of a job's `search` report whose kind and pid are given ("" when missing). */
function searchLine(lines: readonly string[], kind: "env" | "mem", pid: string): string {
  return lines.find((l) => l.startsWith(`${kind} ${pid} `)) ?? "";
}

describe("steps in a job pod of role containers on a real node: image, sidecars, private checkouts, no token", function () {
  this.timeout(300_000);
  let world: World | undefined;
  let s: RealNodeScenario | undefined;
  let git: GitServer | undefined;

  before(async () => {
    world = await startWorld();
    s = await RealNodeScenario.start(world, "real-steps");
    git = await GitServer.start({ address: world.node.gatewayIp });
  });
  after(async () => {
    try {
      await git?.stop();
      await s?.stop();
    } finally {
      await stopWorld(world);
    }
  });

  const sc = (): RealNodeScenario => {
    if (!s) throw new Error("no scenario");
    return s;
  };
  const g = (): GitServer => {
    if (!git) throw new Error("no git server");
    return git;
  };
  /** Seeds a step. BUILDKITE_IMAGE and BUILDKITE_PLUGINS are what the fake's `image` and `plugins` options set. */
  const seedStep = (step: Step): string =>
    sc().fake.seedJob({
      queue_key: step.queue_key,
      command: step.command,
      ...(step.repo === undefined ? {} : { repo: step.repo }),
      env: {
        ...(step.image === undefined ? {} : { BUILDKITE_IMAGE: step.image }),
        ...(step.plugins === undefined ? {} : { BUILDKITE_PLUGINS: JSON.stringify(step.plugins) }),
      },
    });
  const createSecret = async (name: string, data: Record<string, string>): Promise<void> => {
    await sc().t.core.createNamespacedSecret({
      namespace: sc().t.namespace,
      body: { metadata: { name }, stringData: data },
    });
  };

  it("runs a step in its `image:`: `command` has the step image and reads its marker with the copied agent, `agent` has the agent image", async () => {
    const { images } = sc().world.node;
    await sc().queue("step-image");
    const uuid = seedStep({
      queue_key: "step-image",
      image: images.step.ref,
      command: [
        "cat /etc/bk-step-image",
        'echo "report image-agent $(command -v /usr/local/bin/buildkite-agent || echo none)"',
        'echo "report copied-agent $(ls /buildkite/bin)"',
      ].join("\n"),
    });
    const pod = await sc().pod(uuid);
    const containers = containersOf(pod);
    expect(
      Object.fromEntries([...containers].map(([name, c]) => [name, c.image])),
      JSON.stringify(pod.spec),
    ).to.include({ "copy-agent": images.agent.ref, agent: images.agent.ref, command: images.step.ref });
    const done = await sc().buildkiteState(uuid, "finished");
    expect(done.exit_status, `${done.log}\n${describePod(pod)}`).to.equal(0);
    expect(done.log).to.include(STEP_IMAGE_MARKER);
    expect(reported(done.log, "report"), done.log).to.include.members([
      "image-agent none",
      "copied-agent buildkite-agent",
    ]);
    await sc().jobPhase(uuid, "Succeeded");
    await sc().podGone(uuid);
  });

  it("starts the step's sidecar, which the command reaches on localhost; after the job the pod is deleted and the sidecar stops", async () => {
    const { images } = sc().world.node;
    await sc().queue("sidecar");
    const uuid = seedStep({
      queue_key: "sidecar",
      image: images.step.ref,
      plugins: [{ [KUBERNETES_PLUGIN]: { sidecars: [{ image: images.service.ref }] } }],
      command: inBash(SIDECAR_CLIENT),
    });
    const pod = await sc().pod(uuid);
    const sidecars = [...containersOf(pod).values()].filter((c) => c.image === images.service.ref);
    expect(
      sidecars.map((c) => ({ restartPolicy: c.restartPolicy, init: pod.spec?.initContainers?.includes(c) })),
      JSON.stringify(pod.spec),
    ).to.deep.equal([{ restartPolicy: "Always", init: true }]);
    const done = await sc().buildkiteState(uuid, "finished");
    expect(done.exit_status, `${done.log}\n${describePod(pod)}`).to.equal(0);
    // the service answers with its host name, which is the pod's: it ran in the job's pod
    expect(reported(done.log, "sidecar-answer"), done.log).to.deep.equal([
      `${SERVICE_MARKER} ${jobResourceName(uuid)}`,
    ]);
    await sc().jobPhase(uuid, "Succeeded");
    await sc().podGone(uuid);
    await eventually(
      async () => {
        const running = (await nodeContainers(sc().world.node, sc().t.namespace, jobResourceName(uuid))).filter(
          (c) => c.state === "CONTAINER_RUNNING",
        );
        expect(running, "containers of the job's pod still running on the node").to.deep.equal([]);
        expect(serviceProcesses(), "bk-test-service processes on the node").to.deep.equal([]);
      },
      { timeoutMs: 60_000, what: "the sidecar to stop on the node" },
    );
  });

  it("fails a job whose service exits at start before the agent takes it, with the service's own words in Buildkite and the job's Event", async () => {
    const { images } = sc().world.node;
    await sc().queue("broken-service");
    const words = `service-config-missing-${randomBytes(4).toString("hex")}`;
    const uuid = seedStep({
      queue_key: "broken-service",
      image: images.step.ref,
      plugins: [
        {
          [KUBERNETES_PLUGIN]: {
            sidecars: [{ name: "db", image: images.step.ref, command: ["/bin/sh", "-c", `echo ${words} >&2; exit 3`] }],
          },
        },
      ],
      command: "echo never-runs",
    });
    const done = await sc().buildkiteState(uuid, "finished", 180_000);
    expect(done.exit_status).to.equal(-1);
    expect(done.log, "the command never ran").to.not.include("never-runs");
    expect(done.finish_detail, "what Buildkite shows").to.include("Container db").and.include(words);
    const job = await sc().jobPhase(uuid, "Failed");
    expect(job.status).to.include({ reason: "InitContainerFailed" });
    expect(job.status?.message).to.include(`Last lines of container db:\n${words}`);
    const events = await sc().t.core.listNamespacedEvent({
      namespace: sc().t.namespace,
      fieldSelector: `involvedObject.name=${jobResourceName(uuid)}`,
    });
    expect(events.items.some((e) => e.reason === "ContainerLog" && (e.message ?? "").includes(words))).to.equal(true);
    await sc().podGone(uuid);
  });

  it("checks out a private repository over HTTP with a git-credentials Secret; the command reads marker.txt", async () => {
    const server = g();
    await createSecret("git-https", { credentials: `${server.credentialsLine}\n` });
    await sc().queue(
      "private-https",
      checkoutQueue({ httpsCredentialsSecretRef: { name: "git-https", key: "credentials" } }),
    );
    const uuid = seedStep({ queue_key: "private-https", repo: server.httpUrl, command: "cat marker.txt" });
    const pod = await sc().pod(uuid);
    const done = await sc().buildkiteState(uuid, "finished");
    expect(done.exit_status, `${done.log}\n${sc().diagnose(uuid)}\n${describePod(pod)}`).to.equal(0);
    expect(done.log).to.include(server.marker);
    expect(server.requests().filter((r) => r.status === 200 && r.user === server.username)).to.not.deep.equal([]);
    await sc().jobPhase(uuid, "Succeeded");
    await sc().podGone(uuid);
  });

  it("checks out a private repository over SSH with a key and known_hosts from a Secret; the command reads marker.txt", async () => {
    const server = g();
    const ssh = server.ssh;
    if (!ssh) throw new Error("the git server has no SSH side");
    await createSecret("git-ssh", { "ssh-key": ssh.privateKey, known_hosts: `${ssh.knownHosts}\n` });
    await sc().queue(
      "private-ssh",
      checkoutQueue({
        sshKeySecretRef: { name: "git-ssh", key: "ssh-key" },
        knownHostsSecretRef: { name: "git-ssh", key: "known_hosts" },
      }),
    );
    const uuid = seedStep({ queue_key: "private-ssh", repo: ssh.url, command: "cat marker.txt" });
    const pod = await sc().pod(uuid);
    const done = await sc().buildkiteState(uuid, "finished");
    expect(done.exit_status, `${done.log}\n${sc().diagnose(uuid)}\n${describePod(pod)}`).to.equal(0);
    expect(done.log).to.include(server.marker);
    expect(server.sshRequests()).to.include("git-upload-pack '/private.git'");
    await sc().jobPhase(uuid, "Succeeded");
    await sc().podGone(uuid);
  });

  it("fails the checkout of the private repository without credentials, with git's error in the build log", async () => {
    const server = g();
    await sc().queue("private-none", checkoutQueue({}));
    const refusedBefore = server.requests().filter((r) => r.status === 401).length;
    const uuid = seedStep({ queue_key: "private-none", repo: server.httpUrl, command: "cat marker.txt" });
    const done = await sc().buildkiteState(uuid, "finished");
    expect(done.exit_status, done.log).to.not.equal(0);
    expect(done.log).to.match(/could not read Username|Authentication failed|terminal prompts disabled/);
    expect(done.log).to.not.include(server.marker);
    // the server was reached and refused the clone: the failure is the missing credentials, not the network
    expect(server.requests().filter((r) => r.status === 401).length).to.be.above(refusedBefore);
    await sc().jobPhase(uuid, "Failed");
    await sc().podGone(uuid);
  });

  for (const jobTokens of ["Disabled", "Required"] as const)
    it(`leaves no Buildkite token where job code can reach it (jobTokens ${jobTokens}: the agent holds ${jobTokens === "Disabled" ? "the cluster agent token" : "a job acquisition token"}): environments, process memory, /workspace, /buildkite`, async () => {
      const token = sc().fake.agentToken;
      const control = `control-${randomBytes(8).toString("hex")}`;
      const queue = `token-search-${jobTokens.toLowerCase()}`;
      await sc().queue(queue, { jobTokens });
      const uuid = seedStep({ queue_key: queue, command: inBash(tokenSearch(rot(token), rot(control))) });
      const pod = await sc().pod(uuid);
      // Which token the agent holds: the queue's Secret (the cluster token), or the job's own token Secret.
      const tokenSecret = pod.spec?.containers
        .find((c) => c.name === "agent")
        ?.env?.find((e) => e.name === "BUILDKITE_AGENT_TOKEN")?.valueFrom?.secretKeyRef?.name;
      if (jobTokens === "Disabled") expect(tokenSecret).to.equal("bk-token");
      else expect(tokenSecret).to.equal(jobTokenSecretName(uuid));
      const done = await sc().buildkiteState(uuid, "finished", 180_000);
      expect(done.exit_status, `${done.log}\n${describePod(pod)}`).to.equal(0);
      expect(done.log, "the build log").to.not.include(token);
      const lines = reported(done.log, "search");
      expect(
        lines.filter((l) => /token=[1-9]/.test(l)),
        "places where job code found the agent token",
      ).to.deep.equal([]);
      // Positive controls: the same search finds a marker the job planted in a process's environment (and so in its
      // memory), in another process's memory alone, and in a file.
      const [, envPid = "", memPid = ""] =
        /^controls env=(\d+) mem=(\d+)$/.exec(lines.find((l) => l.startsWith("controls ")) ?? "") ?? [];
      const report = lines.join("\n");
      expect(searchLine(lines, "env", envPid), report).to.match(/ control=[1-9]/);
      expect(searchLine(lines, "mem", envPid), report).to.match(/ control=[1-9]/);
      expect(searchLine(lines, "mem", memPid), report).to.match(/ control=[1-9]/);
      expect(searchLine(lines, "env", memPid), report).to.match(/ control=0$/);
      expect(lines, report).to.include(`file ${SEARCH_CONTROL_FILE} token=0 control=1`);
      // Coverage: the memory of every process of the job's uid was read, unless it ended while the search ran.
      const uid = /^me uid=(\d+)$/.exec(lines.find((l) => l.startsWith("me ")) ?? "")?.[1] ?? "";
      const mine = lines.filter((l) => l.startsWith("mem ") && l.includes(` uid=${uid} `));
      expect(mine.length, report).to.be.at.least(4);
      expect(
        mine.filter((l) => l.includes(" bytes=0 ") && !l.endsWith(" gone")),
        report,
      ).to.deep.equal([]);
      const bytes = mine.reduce((total, l) => total + Number(/ bytes=(\d+)/.exec(l)?.[1] ?? 0), 0);
      const files = lines.find((l) => l.startsWith("files ")) ?? "files ?";
      process.stderr.write(
        `      (searched ${String(lines.filter((l) => l.startsWith("env ")).length)} processes, ${(bytes / 2 ** 20).toFixed(0)} MiB of memory, ${files.slice("files ".length)} files)\n`,
      );
      await sc().jobPhase(uuid, "Succeeded");
      await sc().podGone(uuid);
    });
});
