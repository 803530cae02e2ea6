import { CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { parse } from "yaml";
import type { BuildkiteJob } from "../operator/src/api/generated/buildkite-job.js";
import { createLogger } from "../operator/src/observability/logger.js";
import { HttpServer } from "../operator/src/observability/server.js";
import { Operator } from "../operator/src/operator.js";
import { FakeBuildkite } from "../test/fake-buildkite/server.js";
import { hackBinary, repoRoot } from "../test/support/binaries.js";
import { LocalCluster } from "../test/support/cluster.js";
import { installCrds } from "../test/support/crds.js";
import { PodRunner, RUNNER_ANNOTATION } from "../test/support/pod-runner.js";

const NAMESPACE = "ci";
const EXAMPLES = ["queue-linux-amd64.yaml", "queue-linux-arm64-aws.yaml"];
/** A mix a person recognises: quick passes, a failure, a slow one, different priorities. */
const JOBS: { queue: string; command: string; priority: number; label: string }[] = [
  { queue: "linux-small", command: "echo building; sleep 2", priority: 0, label: "build" },
  { queue: "linux-small", command: "echo unit tests; sleep 3", priority: 0, label: "unit tests" },
  { queue: "linux-small", command: "echo lint; exit 1", priority: 0, label: "lint (fails)" },
  { queue: "linux-small", command: "echo docs; sleep 1", priority: 0, label: "docs" },
  { queue: "linux-small", command: "echo hotfix first; sleep 1", priority: 10, label: "hotfix (priority 10)" },
  { queue: "linux-small", command: "echo integration; sleep 4", priority: 0, label: "integration" },
  { queue: "linux-medium-arm", command: "echo arm64 build; sleep 3", priority: 0, label: "arm64 build" },
  { queue: "linux-medium-arm", command: "echo arm64 tests; sleep 2", priority: 0, label: "arm64 tests" },
  { queue: "linux-medium-arm", command: "echo deploy; sleep 2", priority: 5, label: "deploy (priority 5)" },
];

/**
 * `npm run demo`: the local cluster (real control plane, KWOK nodes of both architectures), a fake Buildkite, the
 * operator, the queues of `examples/`, and jobs flowing through them — each run by the real buildkite-agent — in a
 * live table until Ctrl-C. With BK_DEMO_EXIT=1 it exits once every job has ended (used by the tests).
 */
async function main(): Promise<void> {
  const say = (line: string): void => {
    console.log(line);
  };
  say("Starting a local Kubernetes control plane with two amd64 and two arm64 nodes…");
  const cluster = await LocalCluster.start({ log: say });
  const kc = cluster.kubeConfig();
  await installCrds(kc);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  await core.createNamespace({
    body: { metadata: { name: NAMESPACE, labels: { "pod-security.kubernetes.io/enforce": "restricted" } } },
  });

  const fake = await FakeBuildkite.start();
  say(`A fake Buildkite answers at ${fake.url} (the Stacks API and the agent API).`);
  await core.createNamespacedSecret({
    namespace: NAMESPACE,
    body: {
      metadata: { name: "bk-agent-token", labels: { "buildkite.com/agent-token": "true" } },
      stringData: { token: fake.agentToken },
    },
  });
  // Nothing runs containers on KWOK nodes, so a stand-in kubelet runs each job pod's agent on this machine.
  const runner = await PodRunner.start({ kubeConfig: kc, namespace: NAMESPACE });

  const registry = new Registry();
  const logger = createLogger("warn");
  const operator = await Operator.start({
    kubeConfig: kc,
    logger,
    registry,
    buildkite: { pollIntervalMs: 500, stateCheckIntervalMs: 1000 },
    allowedEndpoints: [fake.agentEndpoint],
  });
  const http = await HttpServer.start({
    port: 0,
    host: "127.0.0.1",
    registry,
    notReady: () => operator.notReady(),
    logger,
  });

  for (const file of EXAMPLES) {
    const queue = parse(await readFile(join(repoRoot, "examples", file), "utf8")) as {
      metadata: { name: string };
      spec: Record<string, unknown>;
    };
    // The demo's only changes to the examples: Buildkite is the fake, and the stand-in kubelet runs the pods.
    queue.spec.endpoint = fake.agentEndpoint;
    queue.spec.podTemplate = { annotations: { [RUNNER_ANNOTATION]: "real" } };
    await custom.createNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      plural: "buildkitequeues",
      namespace: NAMESPACE,
      body: queue,
    });
    say(`Applied examples/${file} (BuildkiteQueue ${queue.metadata.name}).`);
  }
  const labels = new Map<string, string>();
  for (const job of JOBS)
    labels.set(fake.seedJob({ queue_key: job.queue, command: job.command, priority: job.priority }), job.label);
  say(`Scheduled ${JOBS.length} jobs in Buildkite. Metrics: http://127.0.0.1:${http.port}/metrics`);
  say(
    `In another terminal: export KUBECONFIG=${cluster.kubeconfigPath}; ${hackBinary("kubectl")} get bkq,bkj,pods -n ${NAMESPACE}\n`,
  );

  const stop = async (code: number): Promise<never> => {
    await operator.stop();
    await runner.stop();
    await http.close();
    await fake.stop();
    await cluster.stop();
    process.exit(code);
  };
  process.once("SIGINT", () => {
    void stop(0);
  });
  process.once("SIGTERM", () => {
    void stop(0);
  });

  let previous = "";
  for (;;) {
    const list = (await custom.listNamespacedCustomObject({
      group: "buildkite.com",
      version: "v1alpha1",
      plural: "buildkitejobs",
      namespace: NAMESPACE,
    })) as { items: BuildkiteJob[] };
    const table = render(list.items, labels, fake);
    if (table !== previous) {
      say(`${new Date().toISOString().slice(11, 19)}\n${table}\n`);
      previous = table;
    }
    const done = [...labels.keys()].every((uuid) => ["finished", "canceled"].includes(fake.job(uuid).state));
    const settled =
      list.items.length === labels.size &&
      list.items.every((j) => ["Succeeded", "Failed", "Canceled", "TimedOut"].includes(j.status?.phase ?? ""));
    if (done && settled && process.env.BK_DEMO_EXIT === "1") {
      say(
        "Every job has ended: each ran in its own pod, sized by its queue's shape, which was deleted when the job ended.",
      );
      await stop(0);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function render(jobs: BuildkiteJob[], labels: Map<string, string>, fake: FakeBuildkite): string {
  const rows = [["JOB", "QUEUE", "SHAPE", "NODE", "PHASE", "EXIT", "BUILDKITE"]];
  const sorted = [...jobs].sort((a, b) =>
    String(a.metadata.creationTimestamp).localeCompare(String(b.metadata.creationTimestamp)),
  );
  for (const j of sorted) {
    rows.push([
      labels.get(j.spec.uuid) ?? j.spec.uuid.slice(0, 8),
      j.spec.queueRef.name,
      j.status?.shape ?? "",
      j.status?.nodeName ?? "",
      j.status?.phase ?? "",
      j.status?.exitCode === undefined ? "" : String(j.status.exitCode),
      fake.job(j.spec.uuid).state,
    ]);
  }
  for (const [uuid, label] of labels) {
    if (!jobs.some((j) => j.spec.uuid === uuid))
      rows.push([label, fake.job(uuid).queue_key, "", "", "(waiting in Buildkite)", "", fake.job(uuid).state]);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
