import { expect } from "chai";
import { RemoteHost } from "../support/remote-host.js";
import { PROBE_FUNCTION, probeResults } from "./probes.js";
import { RealNodeScenario } from "./scenario.js";
import { startWorld, stopGuardedWorld, type World } from "./world.js";

/** Documentation addresses (TEST-NET-3, RFC 5737) on the remote host, each guarded and routed from the node. */
const ALLOWED = "203.0.113.10";
const PROXY = "203.0.113.20";
const PROXY_PORT = 3128;
/** Reachable through the proxy only. */
const TARGET = "203.0.113.30";
/** Neither allowed nor the proxy. */
const OTHER = "203.0.113.40";
/** The remote host's range, and the cloud metadata range as a safety net (nothing here is sent to it). */
const GUARDED = ["169.254.0.0/16", "203.0.113.0/24"];

/**
 * The job: what proxy settings it was given (`proxy-env NAME=value`), then each way out. The proxy is spoken to by hand,
 * its address taken from the job's own HTTP_PROXY and HTTPS_PROXY: an absolute-form GET and a CONNECT tunnel.
 */
const JOB = `${PROBE_FUNCTION}env | grep -i '^[a-z]*_proxy=' | sort | sed 's/^/proxy-env /'
http=\${HTTP_PROXY#http://}; http=\${http%/}
https=\${HTTPS_PROXY#http://}; https=\${https%/}
probe allowed ${ALLOWED} 80
probe proxy-get "\${http%:*}" "\${http##*:}" 'GET http://${TARGET}/ HTTP/1.0\\r\\nHost: ${TARGET}\\r\\n\\r\\n'
probe proxy-connect "\${https%:*}" "\${https##*:}" 'CONNECT ${TARGET}:80 HTTP/1.1\\r\\nHost: ${TARGET}:80\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n'
probe target-direct ${TARGET} 80
probe proxy-other-port ${PROXY} 80
probe other ${OTHER} 80
`;

describe("Restricted egress on the real node: jobs reach their allowed destinations and the rest only through the proxy (kube-router)", function () {
  this.timeout(300_000);
  let world: World | undefined;
  let s: RealNodeScenario | undefined;
  let remoteHost: RemoteHost | undefined;

  before(async () => {
    // Guards first: nothing is sent to these ranges before every route out of the machine is closed to them. Before
    // the node, too, and stopped after it: kube-router rewrites the filter table the guards are partly in.
    remoteHost = await RemoteHost.start({
      addresses: [ALLOWED, PROXY, TARGET, OTHER],
      guardedCidrs: GUARDED,
      proxy: { address: PROXY, port: PROXY_PORT },
    });
    world = await startWorld();
    s = await RealNodeScenario.start(world, "real-restricted");
  });
  after(async () => {
    await stopGuardedWorld(world, s, remoteHost);
  });

  const scenario = (): RealNodeScenario => {
    if (!s) throw new Error("no scenario");
    return s;
  };
  const remote = (): RemoteHost => {
    if (!remoteHost) throw new Error("no remote host");
    return remoteHost;
  };

  it("runs a job that reaches the fake Buildkite and an allowed address directly, a third server only through the proxy, and nothing else", async () => {
    // Every address is an IP: the job needs no DNS, and has none (the operator's default cluster DNS, kube-system's
    // kube-dns pods, does not run in this cluster).
    const buildkite = new URL(scenario().fake.agentEndpoint);
    const proxyUrl = `http://${PROXY}:${String(PROXY_PORT)}`;
    await scenario().queue("restricted", {
      network: {
        egress: "Restricted",
        allowedDestinations: [
          { cidr: `${buildkite.hostname}/32`, ports: [{ port: Number(buildkite.port) }] },
          { cidr: `${ALLOWED}/32`, ports: [{ port: 80 }] },
        ],
        proxy: { url: proxyUrl, cidr: `${PROXY}/32` },
      },
    });
    const uuid = scenario().fake.seedJob({ queue_key: "restricted", command: JOB });
    const done = await scenario().buildkiteState(uuid, "finished");
    expect(done.exit_status, done.log).to.equal(0);

    // The agent container's environment (the job inherits it): the proxy for everything but the allowed destinations.
    const env = Object.fromEntries(
      done.log
        .split("\n")
        .map((l) => /proxy-env ([A-Za-z_]+)=([^\r]*)/.exec(l))
        .filter((m) => m !== null)
        .map((m) => [m[1] ?? "", m[2] ?? ""]),
    );
    const noProxy = `localhost,127.0.0.1,::1,${buildkite.hostname}/32,${ALLOWED}/32`;
    expect(env, done.log).to.deep.equal({
      HTTPS_PROXY: proxyUrl,
      https_proxy: proxyUrl,
      HTTP_PROXY: proxyUrl,
      http_proxy: proxyUrl,
      NO_PROXY: noProxy,
      no_proxy: noProxy,
    });

    const seen = probeResults(done.log);
    expect(seen.get("allowed"), done.log).to.equal(`rc=0 remote-ok ${ALLOWED}`);
    expect(seen.get("proxy-get"), done.log).to.equal(`rc=0 remote-ok ${TARGET}`);
    expect(seen.get("proxy-connect"), done.log).to.equal(`rc=0 remote-ok ${TARGET}`);
    // kube-router answers traffic its policies refuse with an ICMP port-unreachable: "Connection refused" at once
    for (const name of ["target-direct", "proxy-other-port", "other"])
      expect(seen.get(name), `${name}: ${done.log}`).to.match(/^rc=1 .*Connection refused/);

    // What the remote host saw from the pod: the allowed address directly, the target only through the proxy, and
    // nothing of the agent's own traffic (NO_PROXY sends it straight to the fake Buildkite).
    const fromPods = (lines: string[]): string[] =>
      lines.filter((l) => / (to|for) 10\.250\.0\.\d+$/.test(l)).map((l) => l.replace(/10\.250\.0\.\d+$/, "<pod>"));
    expect(fromPods(remote().served()), "requests the remote host answered for the pod").to.deep.equal([
      `served ${ALLOWED} to <pod>`,
    ]);
    expect(fromPods(remote().proxied()), "requests the proxy handled").to.deep.equal([
      `proxied GET http://${TARGET}/ for <pod>`,
      `proxied CONNECT ${TARGET}:80 for <pod>`,
    ]);
    await scenario().jobPhase(uuid, "Succeeded");
  });
});
