import { expect } from "chai";
import { existsSync } from "node:fs";
import { jobResourceName } from "../../operator/src/api/names.js";
import { eventually } from "../support/eventually.js";
import { RemoteHost } from "../support/remote-host.js";
import { Gate } from "./gate.js";
import { run } from "./host.js";
import { ipsetMatches, podFirewall, type PodFirewall } from "./pod-firewall.js";
import { PROBE_FUNCTION, probeResults } from "./probes.js";
import { RealNodeScenario } from "./scenario.js";
import { startWorld, stopGuardedWorld, type World } from "./world.js";

/**
 * Cloud metadata (AWS IMDS, ECS task metadata and credentials, EKS Pod Identity): guarded and routed to the test's own
 * namespace as a safety net, read back from the kernel's rules, but never the target of a single packet. Its
 * enforcement is proven with documentation ranges that the same rules and the same ipset treat the same way.
 */
const METADATA_RANGE = "169.254.0.0/16";
const METADATA_DENIED = ["169.254.169.254", "169.254.170.2", "169.254.170.23"];
/** TEST-NET-2 (RFC 5737), standing in for a private range a queue denies. TEST-NET-1 is not used: the test VMs' own
 * network is 192.0.2.0/24. */
const DENIED_RANGE = "198.51.100.0/24";
const DENIED_ADDRESS = "198.51.100.10";
/** TEST-NET-3, guarded and routed exactly like the metadata range, and allowed by the jobs' policy. */
const PROOF_RANGE = "203.0.113.0/24";
const PROOF_ADDRESS = "203.0.113.10";

/** The ipBlock set of an Internet-mode policy: the one holding 0.0.0.0/0 (as two /1 halves, since ipset has no /0). */
function internetSet(fw: PodFirewall): [string, readonly string[]] {
  const found = [...fw.destinationSets].find(
    ([, members]) => members.includes("0.0.0.0/1") && members.includes("128.0.0.0/1"),
  );
  if (!found)
    throw new Error(`no destination set of ${fw.chain} holds 0.0.0.0/0: ${JSON.stringify([...fw.destinationSets])}`);
  return found;
}

describe("NetworkPolicy on the real node: cloud metadata and denied ranges are unreachable from jobs (kube-router)", function () {
  this.timeout(300_000);
  let world: World | undefined;
  let s: RealNodeScenario | undefined;
  let remoteHost: RemoteHost | undefined;
  let jobGate: Gate | undefined;

  before(async () => {
    // Guards first: nothing is sent to these ranges before every route out of the machine is closed to them. Before
    // the node, too, and stopped after it: kube-router rewrites the filter table the guards are partly in.
    remoteHost = await RemoteHost.start({
      addresses: [DENIED_ADDRESS, PROOF_ADDRESS],
      guardedCidrs: [METADATA_RANGE, DENIED_RANGE, PROOF_RANGE],
    });
    world = await startWorld();
    s = await RealNodeScenario.start(world, "real-netpol");
    jobGate = await Gate.start(world.node.gatewayIp);
  });
  after(async () => {
    try {
      await jobGate?.stop();
    } finally {
      await stopGuardedWorld(world, s, remoteHost);
    }
  });

  const scenario = (): RealNodeScenario => {
    if (!s) throw new Error("no scenario");
    return s;
  };
  const remote = (): RemoteHost => {
    if (!remoteHost) throw new Error("no remote host");
    return remoteHost;
  };
  const gate = (): Gate => {
    if (!jobGate) throw new Error("no gate");
    return jobGate;
  };

  /** A job that waits at the gate (so its pod's firewall can be read first), then probes the denied address. */
  const gatedProbe = (key: string): string =>
    `${PROBE_FUNCTION}${gate().wait(key)}\nprobe denied ${DENIED_ADDRESS} 80\n`;

  /** The firewall kube-router built for the job's pod, once it has one. */
  const firewallOf = (uuid: string): Promise<PodFirewall> =>
    eventually(
      async () => {
        const fw = await podFirewall(scenario().t.namespace, jobResourceName(uuid));
        expect(fw, "kube-router's chain for the job's pod").to.not.equal(undefined);
        if (fw === undefined) throw new Error("unreachable");
        internetSet(fw);
        return fw;
      },
      { timeoutMs: 60_000, what: `kube-router's firewall for the pod of job ${uuid}` },
    );

  it("guards the machine: drop rules for the metadata range sit first where packets leave; a documentation range guarded and routed the same way is dropped when forced out of the default interface", async function () {
    const guarded = [METADATA_RANGE, DENIED_RANGE, PROOF_RANGE];
    const installed = await remote().installedGuards();
    for (const cidr of guarded) {
      expect(
        installed
          .filter((g) => g.destination === cidr)
          .map((g) => `${g.table}/${g.chain} ! -o ${g.exceptOut} -j ${g.target}`),
        `guards of ${cidr}`,
      ).to.have.members(
        ["mangle/POSTROUTING", "filter/OUTPUT", "filter/FORWARD"].map((c) => `${c} ! -o ${remote().veth} -j DROP`),
      );
    }
    // mangle POSTROUTING is the last hook before a packet leaves: nothing ahead of the guards can accept it first.
    const postrouting = installed
      .filter((g) => g.table === "mangle")
      .map((g) => g.position)
      .sort((a, b) => a - b);
    expect(postrouting, "places of the guards in mangle POSTROUTING").to.deep.equal(guarded.map((_, i) => i + 1));
    // The same route for every guarded range (a route lookup: nothing is sent).
    for (const address of [...METADATA_DENIED, DENIED_ADDRESS, PROOF_ADDRESS]) {
      expect(await run("ip", ["route", "get", address]), `the route to ${address}`).to.include(`dev ${remote().veth} `);
    }
    // Routed, the documentation address answers; forced out of the default interface, the guard drops the packets.
    const device = /dev (\S+)/.exec(await run("ip", ["route", "show", "default"]))?.[1];
    if (device === undefined || !existsSync("/usr/bin/curl")) this.skip();
    expect(await run("curl", ["-s", "-m", "2", `http://${PROOF_ADDRESS}/`])).to.equal(`remote-ok ${PROOF_ADDRESS}\n`);
    const before = await remote().guardDrops(PROOF_RANGE);
    const outcome = await run("curl", ["-s", "-m", "2", "--interface", device, `http://${PROOF_ADDRESS}/`]).then(
      () => "answered",
      () => "no answer",
    );
    expect(outcome).to.equal("no answer");
    expect(await remote().guardDrops(PROOF_RANGE), `packets to ${PROOF_RANGE} the guard dropped`).to.be.greaterThan(
      before,
    );
  });

  it("lets a job of a queue with denyMetadata: false reach the other range; kube-router allows the metadata addresses for its pod (the positive control)", async () => {
    await scenario().queue("open", { network: { denyMetadata: false } });
    const uuid = scenario().fake.seedJob({ queue_key: "open", command: gatedProbe("open") });
    const fw = await firewallOf(uuid);
    const [set, members] = internetSet(fw);
    expect(
      members.filter((m) => m.endsWith(" nomatch")),
      `excepted ranges of ${set}`,
    ).to.deep.equal([]);
    for (const address of METADATA_DENIED)
      expect(await ipsetMatches(set, address), `${address} in ${set}`).to.equal(true);
    gate().open("open");
    const done = await scenario().buildkiteState(uuid, "finished");
    expect(probeResults(done.log).get("denied"), done.log).to.equal(`rc=0 remote-ok ${DENIED_ADDRESS}`);
    expect(
      remote()
        .served()
        .some((l) => l.startsWith(`served ${DENIED_ADDRESS} to 10.250.0.`)),
    ).to.equal(true);
  });

  it("keeps a job of a queue with the default policy and extraDeniedCIDRs from both: kube-router excepts the metadata addresses and the range for its pod and rejects the rest; its probe is rejected and never arrives", async () => {
    await scenario().queue("closed", { network: { extraDeniedCIDRs: [DENIED_RANGE] } });
    const servedBefore = remote().served().length;
    const uuid = scenario().fake.seedJob({ queue_key: "closed", command: gatedProbe("closed") });
    const fw = await firewallOf(uuid);
    expect(fw.rejectsUnmarked, `${fw.chain} rejects what no policy allows`).to.equal(true);
    const [set, members] = internetSet(fw);
    // The metadata endpoints and the denied range are excepted from the same allowed set, by the same mechanism.
    expect(
      members.filter((m) => m.endsWith(" nomatch")),
      `excepted ranges of ${set}`,
    ).to.have.members([...METADATA_DENIED, DENIED_RANGE].map((m) => `${m} nomatch`));
    for (const address of [...METADATA_DENIED, DENIED_ADDRESS])
      expect(await ipsetMatches(set, address), `${address} in ${set}`).to.equal(false);
    expect(await ipsetMatches(set, PROOF_ADDRESS), `${PROOF_ADDRESS} in ${set}`).to.equal(true);
    gate().open("closed");
    const done = await scenario().buildkiteState(uuid, "finished");
    // kube-router answers traffic its policies refuse with an ICMP port-unreachable: "Connection refused" at once
    expect(probeResults(done.log).get("denied"), done.log).to.match(/^rc=1 .*Connection refused/);
    expect(remote().served().slice(servedBefore), "requests the remote host answered").to.deep.equal([]);
    // the job itself ran: it reached the fake Buildkite on the pods' gateway through the same policy
    expect(done.exit_status).to.equal(0);
  });
});
