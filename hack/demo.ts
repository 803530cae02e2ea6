import { CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node";
import { createWriteStream, readFileSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { Registry } from "prom-client";
import { parse } from "yaml";
import type { BuildkiteJob } from "../operator/src/api/generated/buildkite-job.js";
import type { BuildkiteQueue } from "../operator/src/api/generated/buildkite-queue.js";
import { createLogger } from "../operator/src/observability/logger.js";
import { HttpServer } from "../operator/src/observability/server.js";
import { Operator } from "../operator/src/operator.js";
import { FakeBuildkite } from "../test/fake-buildkite/server.js";
import { oidcDiscovery } from "../test/fake-sts/jwks.js";
import { FakeSts } from "../test/fake-sts/server.js";
import { hackBinary, repoRoot } from "../test/support/binaries.js";
import { LocalCluster } from "../test/support/cluster.js";
import { installCrds } from "../test/support/crds.js";
import { FastRunner } from "../test/support/fast-runner.js";
import { Director, type World } from "./demo-director.js";
import { jobTable, queueTable, Screen, summary, type JobView } from "./demo-screen.js";
import { JOBS, NAMESPACE, QUEUES, ROLES, type DemoJob, type Role } from "./demo-story.js";

/** The operator's log: a file of its own, so its lines never mix with the live view. */
const OPERATOR_LOG = join(repoRoot, ".tmp", "demo", "operator.log");
/** How long the stories may take before the demo says which did not happen. */
const STORY_TIMEOUT_MS = 120_000;
/** How long the cluster stays up for kubectl after the last job ended, unless Ctrl-C comes first. */
const LINGER_MS = 10 * 60_000;
const TICK_MS = 500;
const TERMINAL = new Set(["Succeeded", "Failed", "Canceled", "TimedOut"]);

const INTRO = [
  "buildkite-operator demo: a local Kubernetes control plane (two amd64 and two arm64 KWOK nodes), a fake Buildkite,",
  "a fake AWS STS (nothing here talks to AWS or Buildkite), the operator, and the queues of examples/.",
  "KWOK nodes run no containers: a stand-in agent plays each job over Buildkite's agent API with a scripted duration",
  "and exit code. The pods, slots, conditions, Events and everything Buildkite is told are the operator's own.",
];

/**
 * `npm run demo`: the stories a new user should see in a few minutes (see hack/demo-story.ts), in a live view
 * redrawn in place, then a summary and the commands to look further; the cluster stays up until Ctrl-C (or ten
 * minutes). With BK_DEMO_EXIT=1 it stops once the stories are told, exiting 1 if one did not happen (the tests).
 */
async function main(): Promise<void> {
  const screen = new Screen(process.stdout);
  const say = (line: string): void => {
    screen.say(line);
  };
  for (const line of INTRO) say(line);
  const cluster = await LocalCluster.start({ log: say });
  const kc = cluster.kubeConfig();
  await installCrds(kc);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  await core.createNamespace({
    body: { metadata: { name: NAMESPACE, labels: { "pod-security.kubernetes.io/enforce": "restricted" } } },
  });

  const fake = await FakeBuildkite.start();
  const sts = await FakeSts.start({
    issuer: cluster.server,
    jwks: oidcDiscovery(cluster.server, { ca: readFileSync(cluster.pki.caCert) }),
  });
  for (const role of ROLES) sts.addRole(role);
  await core.createNamespacedSecret({
    namespace: NAMESPACE,
    body: {
      metadata: { name: "bk-agent-token", labels: { "buildkite.com/agent-token": "true" } },
      stringData: { token: fake.agentToken },
    },
  });

  const plan = new Map<string, DemoJob>();
  const views = new Map<string, JobView>();
  const runner = await FastRunner.start({
    kubeConfig: kc,
    namespaces: [NAMESPACE],
    fakeEndpoint: fake.agentEndpoint,
    adoptAll: true,
    durationMs: (uuid) => plan.get(uuid)?.durationMs ?? 0,
    exitCode: (uuid) => plan.get(uuid)?.exitCode ?? 0,
    log: (uuid, pod) => `${plan.get(uuid)?.label ?? uuid}: played by the demo's stand-in agent in pod ${pod}\n`,
  });

  await mkdir(join(OPERATOR_LOG, ".."), { recursive: true });
  const registry = new Registry();
  const logger = createLogger("info", createWriteStream(OPERATOR_LOG, { flags: "w" }));
  const operator = await Operator.start({
    kubeConfig: kc,
    logger,
    registry,
    buildkite: { pollIntervalMs: 500, stateCheckIntervalMs: 1000 },
    allowedEndpoints: [fake.agentEndpoint],
    // every queue names the fake STS itself; this covers one that would not
    credentials: { stsEndpoint: sts.url },
  });
  const http = await HttpServer.start({
    port: 0,
    host: "127.0.0.1",
    registry,
    notReady: () => operator.notReady(),
    logger,
  });
  say(`Fake Buildkite ${fake.url}, fake STS ${sts.url}. Operator log: ${shown(OPERATOR_LOG)}`);

  for (const q of QUEUES) {
    const queue = await applyQueue(custom, q.name, q.example, fake.agentEndpoint, sts.url, q.patch);
    const changes = ["Buildkite and STS are the fakes", ...(q.changes ? [q.changes] : [])].join("; ");
    say(`Applied examples/${q.example} as BuildkiteQueue ${queue} (${changes}).`);
  }
  const seed = (job: DemoJob): string => {
    const uuid = fake.seedJob({
      queue_key: job.queue,
      command: `echo ${JSON.stringify(job.label)}`,
      ...(job.priority === undefined ? {} : { priority: job.priority }),
      ...(job.env ? { env: job.env } : {}),
    });
    plan.set(uuid, job);
    views.set(uuid, { uuid, label: job.label, queue: job.queue, job: undefined, buildkiteState: "scheduled" });
    return uuid;
  };
  for (const job of JOBS) seed(job);
  say(`Scheduled ${String(JOBS.length)} jobs in Buildkite. Metrics: http://127.0.0.1:${String(http.port)}/metrics\n`);

  const jobsWith = (role: Role): { uuid: string; label: string }[] =>
    [...plan].filter(([, j]) => j.role === role).map(([uuid, j]) => ({ uuid, label: j.label }));
  const director = new Director({ fake, core, say, seed, jobsWith });

  const stop = async (code: number): Promise<never> => {
    screen.end();
    await http.close();
    await operator.stop();
    await runner.stop();
    await sts.stop();
    await fake.stop();
    await cluster.stop();
    process.exit(code);
  };
  // Ctrl-C (SIGINT) or SIGTERM: the exit hooks of test/support/managed-process.ts kill the cluster's processes and
  // remove its directory; everything else (operator, fakes, stand-in agent) lives in this process and ends with it.

  const started = Date.now();
  for (;;) {
    const world = await look(core, custom);
    for (const j of world.jobs) {
      const view = views.get(j.spec.uuid);
      if (view) view.job = j;
    }
    for (const view of views.values()) view.buildkiteState = fake.job(view.uuid).state;
    await director.tick(world);
    const order = (q: BuildkiteQueue): number => QUEUES.findIndex((x) => x.name === q.metadata.name);
    screen.show([queueTable([...world.queues].sort((a, b) => order(a) - order(b))), jobTable([...views.values()])]);
    const settled = [...views.values()].every(
      (v) => ["finished", "canceled"].includes(v.buildkiteState) && TERMINAL.has(v.job?.status?.phase ?? ""),
    );
    const late = Date.now() - started > STORY_TIMEOUT_MS;
    if ((settled && director.pending().length === 0) || late) {
      screen.end();
      say("");
      if (late) say(`Not shown within ${String(STORY_TIMEOUT_MS / 1000)} s: ${director.pending().join(", ")}.`);
      say(summary([...views.values()]));
      for (const line of lookFurther(cluster.kubeconfigPath, http.port)) say(line);
      if (process.env.BK_DEMO_EXIT === "1") await stop(late ? 1 : 0);
      say(`\nThe cluster stays up for ${String(LINGER_MS / 60_000)} minutes; Ctrl-C stops everything now.`);
      await new Promise((resolve) => setTimeout(resolve, LINGER_MS));
      await stop(0);
    }
    await new Promise((resolve) => setTimeout(resolve, TICK_MS));
  }
}

/** Applies an example queue with the demo's changes: the fakes' endpoints, and the story's own (`patch`). */
async function applyQueue(
  custom: CustomObjectsApi,
  name: string,
  example: string,
  endpoint: string,
  stsEndpoint: string,
  patch: ((spec: Record<string, unknown>) => void) | undefined,
): Promise<string> {
  const queue = parse(await readFile(join(repoRoot, "examples", example), "utf8")) as {
    metadata: { name: string };
    spec: Record<string, unknown>;
  };
  queue.metadata.name = name;
  queue.spec.endpoint = endpoint;
  const aws = queue.spec.aws as Record<string, unknown> | undefined;
  if (aws) aws.stsEndpoint = stsEndpoint;
  patch?.(queue.spec);
  // The demo never talks to a cloud: an AWS queue must name the fake STS on loopback.
  const sts = (queue.spec.aws as { stsEndpoint?: string } | undefined)?.stsEndpoint;
  if (aws && !sts?.startsWith("http://127.0.0.1:"))
    throw new Error(`queue ${name} would send its credentials check to ${sts ?? "AWS"}`);
  await custom.createNamespacedCustomObject({
    group: "buildkite.com",
    version: "v1alpha1",
    plural: "buildkitequeues",
    namespace: NAMESPACE,
    body: queue,
  });
  return name;
}

async function look(core: CoreV1Api, custom: CustomObjectsApi): Promise<World> {
  const list = async <T>(plural: string): Promise<T[]> =>
    (
      (await custom.listNamespacedCustomObject({
        group: "buildkite.com",
        version: "v1alpha1",
        plural,
        namespace: NAMESPACE,
      })) as { items: T[] }
    ).items;
  const [queues, jobs, pods] = await Promise.all([
    list<BuildkiteQueue>("buildkitequeues"),
    list<BuildkiteJob>("buildkitejobs"),
    core.listNamespacedPod({ namespace: NAMESPACE }),
  ]);
  return { queues, jobs, pods: pods.items };
}

/** A path as short as it can be from where the demo was started. */
function shown(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel.startsWith("..") ? path : rel;
}

function lookFurther(kubeconfig: string, metricsPort: number): string[] {
  const kubectl = shown(hackBinary("kubectl"));
  const commands: [string, string][] = [
    [`export KUBECONFIG=${kubeconfig}`, ""],
    [`${kubectl} get bkq,bkj -n ${NAMESPACE}`, "queues and jobs, as above"],
    [`${kubectl} describe bkq release-arm -n ${NAMESPACE}`, "CredentialsReady=False with the fix, and its Event"],
    [`${kubectl} get events -n ${NAMESPACE} --sort-by=.lastTimestamp`, "what the operator recorded"],
    [`curl -s http://127.0.0.1:${String(metricsPort)}/metrics | grep ^buildkite_operator_jobs`, "its metrics"],
    [`less ${shown(OPERATOR_LOG)}`, "its JSON log"],
  ];
  return [
    "",
    "Look further, in another terminal:",
    ...commands.flatMap(([c, why]) => [...(why ? [`  # ${why}`] : []), `  ${c}`]),
  ];
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
