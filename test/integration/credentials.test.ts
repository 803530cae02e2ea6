import { CoreV1Api, CustomObjectsApi, KubernetesObjectApi, type KubeConfig } from "@kubernetes/client-node";
import { expect } from "chai";
import { createWriteStream, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ConditionUpdate } from "../../operator/src/api/conditions.js";
import type { BuildkiteQueue } from "../../operator/src/api/generated/buildkite-queue.js";
import { CredentialsPreflight } from "../../operator/src/aws/credentials-preflight.js";
import { realClock } from "../../operator/src/kube/clock.js";
import type { ControllerContext, ReadCache } from "../../operator/src/kube/controller.js";
import { EventRecorder } from "../../operator/src/kube/event-recorder.js";
import { Expectations } from "../../operator/src/kube/expectations.js";
import { createInformers, type InformerSet } from "../../operator/src/kube/informers.js";
import { createLogger, type Logger } from "../../operator/src/observability/logger.js";
import { Metrics } from "../../operator/src/observability/metrics.js";
import { oidcDiscovery } from "../fake-sts/jwks.js";
import { FakeSts } from "../fake-sts/server.js";
import { installCrds } from "../support/crds.js";
import { eventually } from "../support/eventually.js";
import { testCluster, testNamespace } from "../support/global-cluster.js";
import { TestObjects } from "../support/objects.js";
import { jobFixture } from "../support/fixtures.js";
import { timelineNotes } from "../../operator/src/queue/dispatch.js";

const ACCOUNT = "123456789012";
const role = (name: string): string => `arn:aws:iam::${ACCOUNT}:role/${name}`;

/**
 * The IRSA preflight end to end: real ServiceAccount tokens from the test API server (TokenRequest), verified by the
 * fake STS against the keys the API server publishes through OIDC discovery, as IAM would.
 */
describe("AWS credentials preflight (real API server tokens, fake STS)", function () {
  this.timeout(60_000);
  let kc: KubeConfig;
  let t: TestObjects;
  let sts: FakeSts;
  let informers: InformerSet;
  let logger: Logger;
  let recorder: EventRecorder;
  let preflight: CredentialsPreflight | undefined;
  let changed: string[];

  before(async () => {
    kc = testCluster().kubeConfig();
    await installCrds(kc);
    t = new TestObjects(kc, await testNamespace(kc, "credentials"));
    const { server, pki } = testCluster();
    // The issuer is the API server's URL; its discovery document and keys are readable without credentials (the
    // harness binds system:service-account-issuer-discovery to system:unauthenticated, as EKS serves them publicly).
    sts = await FakeSts.start({ issuer: server, jwks: oidcDiscovery(server, { ca: readFileSync(pki.caCert) }) });
    logger = createLogger(
      "debug",
      createWriteStream(join(testCluster().dir, "credentials-preflight.log"), { flags: "a" }),
    );
    recorder = new EventRecorder({ core: t.core, component: "buildkite-operator", clock: realClock, logger });
    informers = createInformers(kc, realClock, logger);
    await Promise.all(informers.all.map((i) => i.start()));
    await Promise.all(informers.all.map((i) => i.waitForSync(20_000)));
  });
  after(async () => {
    await Promise.all(informers.all.map((i) => i.stop()));
    await recorder.flush();
    await sts.stop();
    await t.core.deleteNamespace({ name: t.namespace });
  });
  afterEach(async () => {
    await preflight?.stop();
    preflight = undefined;
    sts.setClockSkew(0);
    await sts.setDown(false);
  });

  /**
   * Runs a preflight, as the operator wires it, over the informer's real cache of BuildkiteQueues, seeing only the
   * queue `name` of the test's namespace so that each test's queue is checked by its own preflight alone.
   */
  function startPreflight(name: string): CredentialsPreflight {
    const all = informers.caches.queues;
    const only: ReadCache<BuildkiteQueue> = {
      get: (n, ns) => (n === name && ns === t.namespace ? all.get(n, ns) : undefined),
      list: () => all.list(t.namespace).filter((q) => q.metadata.name === name),
    };
    const ctx: ControllerContext = {
      clients: {
        core: kc.makeApiClient(CoreV1Api),
        custom: kc.makeApiClient(CustomObjectsApi),
        objects: KubernetesObjectApi.makeApiClient(kc),
      },
      caches: { ...informers.caches, queues: only },
      clock: realClock,
      logger,
      recorder,
      metrics: new Metrics(undefined, { processMetrics: false }),
      expectations: new Expectations(realClock),
    };
    changed = [];
    const p = new CredentialsPreflight(
      ctx,
      { stsEndpoint: sts.url, recheckIntervalMs: 300_000, maxBackoffMs: 2_000 },
      (key) => {
        changed.push(key);
      },
    );
    informers.listeners.queues.add(() => {
      p.sync();
    });
    preflight = p;
    p.sync();
    return p;
  }

  const key = (name: string): string => `${t.namespace}/${name}`;
  /** What a job of the queue would read on its Buildkite timeline about its credentials, from the queue's condition. */
  const timeline = (p: CredentialsPreflight, name: string): string | undefined => {
    const condition = p.conditions(key(name))[0];
    const queue = informers.caches.queues.get(name, t.namespace);
    return condition && queue
      ? timelineNotes(
          { ...jobFixture(undefined, name, t.namespace), status: { podUID: "u" } },
          { ...queue, status: { conditions: [condition as never] } },
        ).find((n) => n.fact === "credentials")?.text
      : undefined;
  };
  const subject = (name: string): string => `system:serviceaccount:${t.namespace}:bkq-${name}`;
  async function createServiceAccount(queue: string): Promise<void> {
    await t.core.createNamespacedServiceAccount({
      namespace: t.namespace,
      body: { metadata: { name: `bkq-${queue}` } },
    });
  }
  async function createQueue(name: string, aws: Record<string, unknown>): Promise<void> {
    await t.createQueue(name, { aws: { region: "eu-west-1", ...aws } });
  }
  /** Waits until the queue's CredentialsReady condition has `fields`, and returns it. */
  async function credentialsWhen(
    p: CredentialsPreflight,
    name: string,
    fields: Partial<ConditionUpdate>,
    timeoutMs = 20_000,
  ): Promise<ConditionUpdate> {
    return eventually(
      () => {
        const [condition] = p.conditions(key(name));
        expect(condition, `CredentialsReady of ${name}: ${JSON.stringify(condition)}`).to.include(fields);
        return condition as ConditionUpdate;
      },
      { timeoutMs, what: `CredentialsReady ${JSON.stringify(fields)} on queue ${name}` },
    );
  }
  async function expectEvent(name: string, type: string, reason: string): Promise<void> {
    await eventually(
      async () => {
        expect((await t.events(name)).map((e) => `${e.type}/${e.reason}`)).to.include(`${type}/${reason}`);
      },
      { what: `a ${type} ${reason} Event on queue ${name}` },
    );
  }

  it("is True when the trust policy admits the queue's ServiceAccount, naming the role and the expiry", async () => {
    sts.addRole({ arn: role("good"), allowedSubjects: [subject("good")] });
    await createServiceAccount("good");
    await createQueue("good", { roleArn: role("good") });
    const p = startPreflight("good");
    const ready = await credentialsWhen(p, "good", { status: "True", reason: "RoleAssumed" });
    expect(ready.message).to.match(
      new RegExp(
        `^ServiceAccount ${t.namespace}/bkq-good assumed role ${role("good")} \\(as arn:aws:sts::${ACCOUNT}:assumed-role/good/buildkite-operator-preflight\\); credentials valid until \\d{4}-`,
      ),
    );
    expect(timeline(p, "good")).to.equal(undefined);
    expect(changed).to.include(key("good"));
    await expectEvent("good", "Normal", "RoleAssumed");
    const calls = sts.requests().filter((r) => r.subject === subject("good"));
    expect(calls.map((r) => [r.action, r.status, r.roleArn, r.durationSeconds])).to.deep.include([
      "AssumeRoleWithWebIdentity",
      200,
      role("good"),
      900,
    ]);
  });

  it("is False AccessDenied with the expected sub when the trust policy names another subject, and True once spec.aws points at a role that admits it", async () => {
    sts.addRole({ arn: role("strict"), allowedSubjects: [`system:serviceaccount:${t.namespace}:someone-else`] });
    await createServiceAccount("wrongsub");
    await createQueue("wrongsub", { roleArn: role("strict") });
    const p = startPreflight("wrongsub");
    const denied = await credentialsWhen(p, "wrongsub", { status: "False", reason: "AccessDenied" });
    expect(denied.message).to.include("Not authorized to perform sts:AssumeRoleWithWebIdentity (AccessDenied)");
    const issuer = testCluster().server.replace(/^https:\/\//, "");
    expect(denied.message).to.include(`${issuer}:sub = "${subject("wrongsub")}"`);
    expect(timeline(p, "wrongsub")).to.equal(
      `AWS credentials will not work in this job: ServiceAccount ${t.namespace}/bkq-wrongsub cannot assume role ${role("strict")} (AccessDenied). See: kubectl describe buildkitequeue wrongsub -n ${t.namespace}`,
    );
    await expectEvent("wrongsub", "Warning", "AccessDenied");

    // the next retry of the refusal is 10 s out: only a spec change can make it True sooner
    sts.addRole({ arn: role("fixed"), allowedSubjects: [`system:serviceaccount:${t.namespace}:bkq-*`] });
    await t.patchQueueSpec("wrongsub", { aws: { roleArn: role("fixed") } });
    await credentialsWhen(p, "wrongsub", { status: "True", reason: "RoleAssumed" }, 8_000);
  });

  it("is False InvalidIdentityToken when the token's audience is not the identity provider's", async () => {
    sts.addRole({ arn: role("aud"), allowedSubjects: [subject("aud")] });
    await createServiceAccount("aud");
    await createQueue("aud", { roleArn: role("aud"), audience: "vault.example.com" });
    const p = startPreflight("aud");
    const invalid = await credentialsWhen(p, "aud", { status: "False", reason: "InvalidIdentityToken" });
    expect(invalid.message).to.include("Incorrect token audience (InvalidIdentityToken)");
    expect(invalid.message).to.include('include "vault.example.com" (spec.aws.audience)');
  });

  it("is False ExpiredTokenException when STS's clock is past the token's expiry", async () => {
    sts.addRole({ arn: role("late"), allowedSubjects: [subject("late")] });
    sts.setClockSkew(3_600_000);
    await createServiceAccount("late");
    await createQueue("late", { roleArn: role("late") });
    const p = startPreflight("late");
    const expired = await credentialsWhen(p, "late", { status: "False", reason: "ExpiredTokenException" });
    expect(expired.message).to.include("Token expired");
    expect(expired.message).to.include("clocks");
  });

  it("is Unknown StsUnavailable while STS refuses connections, backing off, and True once it is back", async () => {
    sts.addRole({ arn: role("flaky"), allowedSubjects: [subject("flaky")] });
    await sts.setDown(true);
    await createServiceAccount("flaky");
    await createQueue("flaky", { roleArn: role("flaky") });
    const p = startPreflight("flaky");
    const down = await credentialsWhen(p, "flaky", { status: "Unknown", reason: "StsUnavailable" });
    expect(down.message).to.include(`Could not get an answer from STS at ${sts.url} (ECONNREFUSED)`);
    expect(timeline(p, "flaky")).to.equal(undefined);
    await expectEvent("flaky", "Warning", "StsUnavailable");
    // retries grow (1 s, 2 s, then the 2 s maximum): a few in 4 s, never a hot loop
    await eventually(
      () => {
        expect(down.message).to.not.equal(p.conditions(key("flaky"))[0]?.message);
      },
      { timeoutMs: 5_000, what: "a retry" },
    );
    await sts.setDown(false);
    await credentialsWhen(p, "flaky", { status: "True", reason: "RoleAssumed" }, 10_000);
    await expectEvent("flaky", "Normal", "RoleAssumed");
  });

  it("waits for the queue's ServiceAccount, then checks as soon as it exists", async () => {
    sts.addRole({ arn: role("late-sa"), allowedSubjects: [subject("late-sa")] });
    await createQueue("late-sa", { roleArn: role("late-sa") });
    const p = startPreflight("late-sa");
    await credentialsWhen(p, "late-sa", { status: "Unknown", reason: "WaitingForServiceAccount" });
    await createServiceAccount("late-sa");
    await credentialsWhen(p, "late-sa", { status: "True", reason: "RoleAssumed" }, 15_000);
  });

  it("reports nothing for a queue without spec.aws, and stops checking a queue whose spec.aws is removed", async () => {
    sts.addRole({ arn: role("dropped"), allowedSubjects: [subject("dropped")] });
    await createServiceAccount("dropped");
    await createQueue("dropped", { roleArn: role("dropped") });
    const p = startPreflight("dropped");
    await credentialsWhen(p, "dropped", { status: "True" });
    changed.length = 0;
    await t.patchQueueSpec("dropped", { aws: null });
    await eventually(
      () => {
        expect(p.conditions(key("dropped"))).to.deep.equal([]);
        expect(changed, "a status rewrite, so the condition goes").to.include(key("dropped"));
      },
      { what: "the CredentialsReady condition to go" },
    );
    expect(timeline(p, "dropped")).to.equal(undefined);
    await t.createQueue("plain", {});
    p.sync();
    expect(p.conditions(key("plain"))).to.deep.equal([]);
  });
});
