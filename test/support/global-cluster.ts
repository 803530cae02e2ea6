import { CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { randomBytes } from "node:crypto";
import { LocalCluster } from "./cluster.js";
import { eventually } from "./eventually.js";

/**
 * Mocha global fixtures: one real cluster per test run (loaded with `--require`), shared by every integration test.
 * Each test asks for its own namespace with {@link testNamespace}.
 */
let cluster: LocalCluster | undefined;

export async function mochaGlobalSetup(): Promise<void> {
  cluster = await LocalCluster.start();
}

export async function mochaGlobalTeardown(): Promise<void> {
  await cluster?.stop();
  cluster = undefined;
}

/** The run's cluster; fails clearly if the integration tests were started without the global fixture. */
export function testCluster(): LocalCluster {
  if (!cluster)
    throw new Error("no test cluster: run integration tests with --require dist/test/support/global-cluster.js");
  return cluster;
}

/** Creates a fresh namespace (with `labels`) and waits until pods can be created in it. Deleted by the caller. */
export async function testNamespace(
  kc: KubeConfig,
  prefix: string,
  labels: Record<string, string> = {},
): Promise<string> {
  const core = kc.makeApiClient(CoreV1Api);
  const name = `${prefix}-${randomBytes(3).toString("hex")}`;
  await core.createNamespace({
    body: { metadata: { name, labels: { "test.buildkite.com/suite": prefix, ...labels } } },
  });
  await eventually(() => core.readNamespacedServiceAccount({ name: "default", namespace: name }), {
    timeoutMs: 20_000,
    what: `the default ServiceAccount of namespace ${name}`,
  });
  return name;
}
