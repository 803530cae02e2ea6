import { expect } from "chai";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Operator } from "../../operator/src/operator.js";
import { oidcDiscovery } from "../fake-sts/jwks.js";
import { FakeSts } from "../fake-sts/server.js";
import { repoRoot } from "../support/binaries.js";
import { BuildkiteScenario } from "../support/buildkite-scenario.js";
import { testCluster } from "../support/global-cluster.js";
import { startTestOperator } from "../support/operator.js";
import { jobResourceName } from "../../operator/src/api/names.js";
import { roleSessionName } from "../../operator/src/job/pod-builder.js";

const ROLE = "arn:aws:iam::123456789012:role/ci-deploy";

/**
 * The job's own view of its credentials: the AWS SDK's default chain, given nothing but the pod's environment
 * (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_REGION) and the projected token file, asks STS for the role.
 */
const SDK_SCRIPT = [
  "const { STSClient } = require('@aws-sdk/client-sts');",
  "new STSClient({}).config.credentials().then((c) => { console.log('assumed-key=' + c.accessKeyId + ' expires=' + c.expiration.toISOString()); },",
  "  (e) => { console.log('sdk-error=' + e.name + ': ' + e.message); process.exit(4); });",
].join(" ");

describe("AWS credentials through IRSA: checked before jobs need them, and obtained by the job's own pod", function () {
  this.timeout(120_000);
  let s: BuildkiteScenario;
  let sts: FakeSts;
  let operator: Operator | undefined;

  before(async () => {
    const kc = testCluster().kubeConfig();
    s = await BuildkiteScenario.start(kc, "bk-aws");
    const { server, pki } = testCluster();
    sts = await FakeSts.start({ issuer: server, jwks: oidcDiscovery(server, { ca: readFileSync(pki.caCert) }) });
    operator = await startTestOperator(kc, "credentials-flow", {
      buildkite: { pollIntervalMs: 250, stateCheckIntervalMs: 500 },
      credentials: { recheckIntervalMs: 60_000 },
      allowedEndpoints: [s.fake.agentEndpoint],
    });
  });
  after(async () => {
    await operator?.stop();
    await sts.stop();
    await s.stop();
  });

  const awsQueue = (name: string, roleArn = ROLE): Promise<void> =>
    s.queue(name, "real", {
      aws: { roleArn, region: "eu-west-1", stsEndpoint: sts.url },
      podTemplate: {
        annotations: { "kwok.test/runner": "real" },
        env: [{ name: "NODE_PATH", value: join(repoRoot, "node_modules") }],
      },
    });

  it("shows the assumed role on a correct queue, and the job's own AWS SDK receives the role's credentials", async () => {
    sts.addRole({ arn: ROLE, allowedSubjects: [`system:serviceaccount:${s.t.namespace}:bkq-deploy`] });
    await awsQueue("deploy");
    const message = await s.condition("deploy", "CredentialsReady", "True", "RoleAssumed");
    expect(message).to.include(ROLE);
    const uuid = s.fake.seedJob({ queue_key: "deploy", command: `node -e "${SDK_SCRIPT}"` });
    const done = await s.buildkiteState(uuid, "finished");
    expect(done.log).to.match(/assumed-key=ASIA[A-Z0-9]+ expires=/);
    expect(done.exit_status).to.equal(0);
    const calls = sts.requests().filter((r) => r.roleArn === ROLE);
    expect(calls.length, "STS calls: the preflight's and the job's").to.be.at.least(2);
    // CloudTrail shows the session name: the job's own SDK call names pipeline, build and job.
    const job = await s.t.job(jobResourceName(uuid));
    if (!job) throw new Error("the BuildkiteJob is gone");
    const session = roleSessionName(job);
    expect(session).to.match(
      new RegExp(`^bk-${job.spec.pipelineSlug ?? ""}-${String(job.spec.buildNumber ?? "")}-${uuid}$`),
    );
    expect(
      calls.map((c) => c.roleSessionName),
      "session names STS received",
    ).to.include(session);
  });

  it("says within seconds, before any job fails, that a role's trust policy does not allow the queue's ServiceAccount, and tells each job's timeline", async () => {
    sts.addRole({
      arn: "arn:aws:iam::123456789012:role/wrong-trust",
      allowedSubjects: ["system:serviceaccount:other:someone"],
    });
    await awsQueue("broken", "arn:aws:iam::123456789012:role/wrong-trust");
    const message = await s.condition("broken", "CredentialsReady", "False", "AccessDenied", 15_000);
    expect(message).to.include(`system:serviceaccount:${s.t.namespace}:bkq-broken`);
    const events = await s.t.events("broken");
    expect(events.some((e) => e.type === "Warning" && e.reason === "AccessDenied")).to.equal(true);
    const uuid = s.fake.seedJob({ queue_key: "broken", command: "exit 0" });
    const done = await s.buildkiteState(uuid, "finished");
    expect(done.notifications.map((n) => n.detail).join("\n")).to.include("AccessDenied");
  });
});
