import { expect } from "chai";
import { existsSync } from "node:fs";
import { MetadataHost } from "../support/metadata-host.js";
import { run } from "./host.js";
import { RealNodeScenario } from "./scenario.js";
import { startWorld, stopWorld, type World } from "./world.js";

const METADATA = "169.254.169.254";
/** TEST-NET-2: a documentation range (RFC 5737) standing in for a private range a queue denies. TEST-NET-1 is not
 * used: the test VMs' own network is 192.0.2.0/24. */
const DENIED_RANGE = "198.51.100.0/24";
const DENIED_ADDRESS = "198.51.100.10";

/**
 * Each address once over HTTP from inside the job, with bash's /dev/tcp (the agent image has no curl). Prints
 * `probe <address> rc=<exit> <last line or error>`; no expected value appears in the command's own text.
 */
const PROBE = `
for a in ${METADATA} ${DENIED_ADDRESS}; do
  if r=$(timeout 5 bash -c "exec 3<>/dev/tcp/$a/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && tail -n 1 <&3" 2>&1); then rc=0; else rc=$?; fi
  echo "probe $a rc=$rc $(echo "$r" | tr '\\n' ' ')"
done
`;

/** The probe lines of a job's log: address → what happened. */
function probes(log: string): Map<string, string> {
  const lines = log.split("\n").map((l) => /probe (\S+) (rc=[^\r]*)/.exec(l)).filter((m) => m !== null && !(m[2] ?? "").includes("$"));
  return new Map(lines.map((m) => [m?.[1] ?? "", (m?.[2] ?? "").trim()]));
}

describe("NetworkPolicy on the real node: cloud metadata and denied ranges are unreachable from jobs (kube-router)", function () {
  this.timeout(300_000);
  let world: World | undefined;
  let s: RealNodeScenario | undefined;
  let meta: MetadataHost | undefined;

  before(async () => {
    world = await startWorld();
    // Guards first: nothing is sent to these ranges before every route out of the machine is closed to them.
    meta = await MetadataHost.start(world.cluster.dir, { addresses: [METADATA, DENIED_ADDRESS], guardedCidrs: ["169.254.0.0/16", DENIED_RANGE] });
    s = await RealNodeScenario.start(world, "real-netpol");
  });
  after(async () => {
    try {
      await s?.stop();
      await meta?.stop();
    } finally {
      await stopWorld(world);
    }
  });

  const scenario = (): RealNodeScenario => { if (!s) throw new Error("no scenario"); return s; };
  const metadata = (): MetadataHost => { if (!meta) throw new Error("no metadata host"); return meta; };

  it("guards the machine: a probe forced out of the default interface toward the metadata address never leaves", async function () {
    // Every guarded range is routed to the fake host, so only a socket bound to another interface can aim elsewhere.
    const device = /dev (\S+)/.exec(await run("ip", ["route", "show", "default"]))?.[1];
    if (device === undefined || !existsSync("/usr/bin/curl")) this.skip();
    const before = await metadata().guardDrops();
    const outcome = await run("curl", ["-s", "-m", "2", "--interface", device, `http://${METADATA}/`]).then(() => "answered", () => "no answer");
    expect(outcome).to.equal("no answer");
    expect(await metadata().guardDrops(), "packets the guard dropped").to.be.greaterThan(before);
  });

  it("lets a job of a queue with denyMetadata: false reach the metadata host and the other range (the positive control)", async () => {
    await scenario().queue("open", { network: { denyMetadata: false } });
    const uuid = scenario().fake.seedJob({ queue_key: "open", command: PROBE });
    const done = await scenario().buildkiteState(uuid, "finished");
    const seen = probes(done.log);
    expect(seen.get(METADATA), done.log).to.equal(`rc=0 metadata-ok ${METADATA}`);
    expect(seen.get(DENIED_ADDRESS), done.log).to.equal(`rc=0 metadata-ok ${DENIED_ADDRESS}`);
    expect(metadata().served().some((l) => l.startsWith(`served ${METADATA} to 10.250.0.`))).to.equal(true);
  });

  it("keeps a job of a queue with the default policy and extraDeniedCIDRs from both: its probes are rejected and never arrive", async () => {
    await scenario().queue("closed", { network: { extraDeniedCIDRs: [DENIED_RANGE] } });
    const servedBefore = metadata().served().length;
    const uuid = scenario().fake.seedJob({ queue_key: "closed", command: PROBE });
    const done = await scenario().buildkiteState(uuid, "finished");
    const seen = probes(done.log);
    // kube-router answers traffic its policies refuse with an ICMP port-unreachable: "Connection refused" at once
    expect(seen.get(METADATA), done.log).to.match(/^rc=1 .*Connection refused/);
    expect(seen.get(DENIED_ADDRESS), done.log).to.match(/^rc=1 .*Connection refused/);
    expect(metadata().served().slice(servedBefore), "requests the fake host answered").to.deep.equal([]);
    // the job itself ran: it reached the fake Buildkite on the pods' gateway through the same policy
    expect(done.exit_status).to.equal(0);
  });
});
