import { CoreV1Api, type V1Container, type V1Pod, type V1PodSpec } from "@kubernetes/client-node";
import { expect } from "chai";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually } from "../support/eventually.js";
import { GitServer } from "../support/git-server.js";
import { testNamespace } from "../support/global-cluster.js";
import { REAL_NODE_TOLERATION } from "../support/real-node.js";
import { run } from "./host.js";
import { SERVICE_MARKER, STEP_IMAGE_MARKER } from "./images.js";
import { inBash, nodeContainers, reported, serviceProcesses, SIDECAR_CLIENT } from "./steps.js";
import { startWorld, stopWorld, type World } from "./world.js";

/** The uid the operator runs every container of a job pod as (pod-builder's JOB_UID). */
const JOB_UID = 1000;
/**
 * The agent image's own user. OpenSSH's client will not run for a uid that has no passwd entry ("No user exists for
 * uid 1000"), and the agent image names only this one, so the clone pod runs as it.
 */
const AGENT_UID = 10000;

/**
 * What the step tests (steps.test.ts) stand on, proven without the operator: the step and service images run on the
 * real node (a native sidecar reached on localhost, stopped with its pod), and the private git server lets a clone
 * in with its credentials only, from the host and from a pod on the node, over HTTP and SSH.
 */
describe("the fixtures of the step tests: step and service images, a private git server", function () {
  this.timeout(180_000);
  let world: World | undefined;
  let git: GitServer | undefined;
  let core: CoreV1Api;
  let namespace: string;
  let scratch: string;

  before(async () => {
    world = await startWorld();
    core = world.cluster.kubeConfig().makeApiClient(CoreV1Api);
    namespace = await testNamespace(world.cluster.kubeConfig(), "step-fixtures", {
      "pod-security.kubernetes.io/enforce": "restricted",
    });
    git = await GitServer.start({ address: world.node.gatewayIp });
    scratch = await mkdtemp(join(tmpdir(), "bk-step-fixtures-"));
  });
  after(async () => {
    try {
      await git?.stop();
      if (scratch) await rm(scratch, { recursive: true, force: true });
    } finally {
      await stopWorld(world);
    }
  });

  const w = (): World => {
    if (!world) throw new Error("no world");
    return world;
  };
  const g = (): GitServer => {
    if (!git) throw new Error("no git server");
    return git;
  };

  it("serves the repository to a clone from the host with the credential store or the SSH key, and to nothing else", async () => {
    const server = g();
    const ssh = server.ssh;
    if (!ssh) throw new Error("the git server has no SSH side");
    const store = join(scratch, "credentials");
    const key = join(scratch, "id");
    const knownHosts = join(scratch, "known_hosts");
    const strangerHosts = join(scratch, "stranger_hosts");
    await writeFile(store, `${server.credentialsLine}\n`, { mode: 0o600 });
    await writeFile(key, ssh.privateKey, { mode: 0o600 });
    await writeFile(knownHosts, `${ssh.knownHosts}\n`);
    await writeFile(strangerHosts, "");
    const sshCommand = (hosts: string): string =>
      `GIT_SSH_COMMAND=ssh -i ${key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=${hosts}`;
    const clone = (env: readonly string[], url: string, dir: string): Promise<string> =>
      run("env", [
        "GIT_CONFIG_NOSYSTEM=1",
        "GIT_CONFIG_GLOBAL=/dev/null",
        "GIT_TERMINAL_PROMPT=0",
        ...env,
        "git",
        "clone",
        "-q",
        url,
        join(scratch, dir),
      ]);

    await clone(
      [`GIT_CONFIG_COUNT=1`, "GIT_CONFIG_KEY_0=credential.helper", `GIT_CONFIG_VALUE_0=store --file=${store}`],
      server.httpUrl,
      "http",
    );
    expect(await readFile(join(scratch, "http", "marker.txt"), "utf8")).to.equal(`${server.marker}\n`);
    await clone([sshCommand(knownHosts)], ssh.url, "ssh");
    expect(await readFile(join(scratch, "ssh", "marker.txt"), "utf8")).to.equal(`${server.marker}\n`);
    expect(server.sshRequests()).to.deep.equal(["git-upload-pack '/private.git'"]);

    const refused = async (env: readonly string[], url: string, dir: string): Promise<string> => {
      try {
        await clone(env, url, dir);
      } catch (err) {
        return String(err);
      }
      throw new Error(`cloned ${url} into ${dir}`);
    };
    expect(await refused([], server.httpUrl, "anonymous")).to.match(/could not read Username|Authentication failed/);
    const wrong = `http://${server.username}:not-the-token@${new URL(server.httpUrl).host}`;
    await writeFile(store, `${wrong}\n`);
    expect(
      await refused(
        [`GIT_CONFIG_COUNT=1`, "GIT_CONFIG_KEY_0=credential.helper", `GIT_CONFIG_VALUE_0=store --file=${store}`],
        server.httpUrl,
        "wrong",
      ),
    ).to.match(/Authentication failed/);
    expect(await refused([sshCommand(strangerHosts)], ssh.url, "stranger")).to.match(/Host key verification failed/);
    const statuses = server.requests().map((r) => `${String(r.status)} ${r.user ?? "-"}`);
    expect(statuses).to.include.members(["401 -", `200 ${server.username}`]);
  });

  it("lets a pod on the node clone over HTTP and SSH with credentials from a Secret, as the agent image's user", async () => {
    const server = g();
    const ssh = server.ssh;
    if (!ssh) throw new Error("the git server has no SSH side");
    await core.createNamespacedSecret({
      namespace,
      body: {
        metadata: { name: "git" },
        stringData: {
          credentials: `${server.credentialsLine}\n`,
          "ssh-key": ssh.privateKey,
          "known-hosts": ssh.knownHosts,
        },
      },
    });
    const script = `set -u
export GIT_TERMINAL_PROMPT=0 HOME=$(mktemp -d)
cd "$HOME"
if git -c credential.helper="store --file=/git/credentials" clone -q ${server.httpUrl} http 2>err; then echo "clone http $(cat http/marker.txt)"; else echo "clone http failed $(tr '\\n' ' ' <err)"; fi
export GIT_SSH_COMMAND="ssh -i /git/ssh-key -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/git/known-hosts"
if git clone -q ${ssh.url} ssh 2>err; then echo "clone ssh $(cat ssh/marker.txt)"; else echo "clone ssh failed $(tr '\\n' ' ' <err)"; fi
unset GIT_SSH_COMMAND
if git clone -q ${server.httpUrl} anonymous 2>err; then echo "clone anonymous cloned"; else echo "clone anonymous refused"; fi`;
    const clone = container("clone", w().node.images.agent.ref, inBash(script));
    clone.volumeMounts = [{ name: "git", mountPath: "/git", readOnly: true }];
    const pod = restrictedPod("git-clone", [clone], AGENT_UID);
    pod.spec.volumes = [{ name: "git", secret: { secretName: "git", defaultMode: 0o400 } }];
    await core.createNamespacedPod({ namespace, body: pod });
    await podSucceeded("git-clone");
    const lines = reported(w().node.containerLog(namespace, "git-clone", "clone"), "clone");
    expect(lines).to.deep.equal([`http ${server.marker}`, `ssh ${server.marker}`, "anonymous refused"]);
  });

  it("runs the service image as a native sidecar that the step image reaches on localhost; it stops with the pod", async () => {
    const sidecar = container("service", w().node.images.service.ref);
    sidecar.restartPolicy = "Always";
    const script = `cat /etc/bk-step-image | sed 's/^/step /'\n${SIDECAR_CLIENT}\necho "step image agent $(command -v buildkite-agent || echo none)"`;
    const pod = restrictedPod("sidecar", [container("command", w().node.images.step.ref, inBash(script))]);
    pod.spec.initContainers = [sidecar];
    await core.createNamespacedPod({ namespace, body: pod });
    await podSucceeded("sidecar");
    const log = w().node.containerLog(namespace, "sidecar", "command");
    expect(reported(log, "step")).to.deep.equal([STEP_IMAGE_MARKER, "image agent none"]);
    expect(reported(log, "sidecar-answer")).to.deep.equal([`${SERVICE_MARKER} sidecar`]);
    expect(w().node.containerLog(namespace, "sidecar", "service")).to.include("bk-test-service: stopped");
    const containers = await nodeContainers(w().node, namespace, "sidecar");
    expect(containers.map((c) => `${c.name} ${c.state}`)).to.have.members([
      "service CONTAINER_EXITED",
      "command CONTAINER_EXITED",
    ]);
    expect(serviceProcesses(), "bk-test-service processes on the host").to.deep.equal([]);
  });

  async function podSucceeded(name: string): Promise<V1Pod> {
    return eventually(
      async () => {
        const p = await core.readNamespacedPod({ name, namespace });
        expect(p.status?.phase, JSON.stringify(p.status)).to.equal("Succeeded");
        return p;
      },
      { timeoutMs: 90_000, intervalMs: 500, what: `pod ${name} to succeed on the real node` },
    );
  }

  /** A pod that Pod Security "restricted" admits, on the real node, running as the job's uid like a job pod. */
  function restrictedPod(name: string, containers: V1Container[], uid = JOB_UID): V1Pod & { spec: V1PodSpec } {
    return {
      metadata: { name },
      spec: {
        restartPolicy: "Never",
        tolerations: [REAL_NODE_TOLERATION],
        nodeSelector: { "kubernetes.io/arch": "amd64" },
        automountServiceAccountToken: false,
        securityContext: {
          runAsNonRoot: true,
          runAsUser: uid,
          runAsGroup: uid,
          fsGroup: uid,
          seccompProfile: { type: "RuntimeDefault" },
        },
        containers,
      },
    };
  }

  function container(name: string, image: string, script?: string): V1Container {
    const c: V1Container = {
      name,
      image,
      securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
    };
    if (script !== undefined) c.command = ["/bin/sh", "-c", script];
    return c;
  }
});
