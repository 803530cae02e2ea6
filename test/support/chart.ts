import { AppsV1Api, CoreV1Api, RbacAuthorizationV1Api, type KubeConfig } from "@kubernetes/client-node";
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { parseAllDocuments, stringify } from "yaml";
import { hackBinary, repoRoot } from "./binaries.js";
import { ManagedProcess } from "./managed-process.js";

const run = promisify(execFile);

/** The chart's directory. */
export const CHART_DIR = join(repoRoot, "charts", "buildkite-operator");

/** The Kubernetes version of hack/versions.env, the one the tests run against (for `helm template --kube-version`). */
export function pinnedKubernetesVersion(): string {
  const pin = /^KUBERNETES_VERSION=(\S+)$/m.exec(readFileSync(join(repoRoot, "hack", "versions.env"), "utf8"))?.[1];
  if (!pin) throw new Error("hack/versions.env has no KUBERNETES_VERSION");
  return pin;
}

/** A helm command that failed; the message holds what helm printed (schema errors, lint findings). */
export class HelmError extends Error {
  override readonly name = "HelmError";
  constructor(
    readonly args: readonly string[],
    readonly output: string,
    options?: ErrorOptions,
  ) {
    super(`helm ${args.join(" ")} failed:\n${output}`, options);
  }
}

/**
 * Runs hack/bin/helm with its cache, config, data and HOME under the repository's ignored `.tmp/helm`, never the
 * user's home. Returns stdout; throws {@link HelmError} with helm's output on a non-zero exit.
 */
export async function helm(args: readonly string[], kubeconfig?: string): Promise<string> {
  const home = join(repoRoot, ".tmp", "helm");
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    // client-go keeps its discovery cache in $HOME/.kube/cache (in the working directory when HOME is unset).
    HOME: join(home, "home"),
    HELM_CACHE_HOME: join(home, "cache"),
    HELM_CONFIG_HOME: join(home, "config"),
    HELM_DATA_HOME: join(home, "data"),
    ...(kubeconfig ? { KUBECONFIG: kubeconfig } : {}),
  };
  try {
    const { stdout } = await run(hackBinary("helm"), [...args], { env, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    throw new HelmError(args, `${e.stdout ?? ""}${e.stderr ?? ""}`, { cause: err });
  }
}

/** A rendered manifest of the chart: its kind and name, and the rest as rendered. */
export interface ChartManifest {
  kind: string;
  metadata: { name: string; namespace?: string };
  [key: string]: unknown;
}

/** `helm template` of the chart as release `bk` in namespace `buildkite`, with `args` (`--set …`), parsed. */
export async function renderChart(...args: string[]): Promise<ChartManifest[]> {
  const out = await helm([
    "template",
    "bk",
    CHART_DIR,
    "--namespace",
    "buildkite",
    "--kube-version",
    pinnedKubernetesVersion(),
    ...args,
  ]);
  return parseAllDocuments(out)
    .map((d) => d.toJS() as ChartManifest | null)
    .filter((m): m is ChartManifest => m !== null);
}

export const byKind = (manifests: ChartManifest[], kind: string): ChartManifest[] =>
  manifests.filter((m) => m.kind === kind);

/** What helm says when the values are refused (empty if they were accepted). */
export async function valuesRefusal(...set: string[]): Promise<string> {
  try {
    await renderChart(...set);
    return "";
  } catch (err) {
    if (err instanceof HelmError) return err.output;
    throw err;
  }
}

/**
 * Writes a kubeconfig that authenticates as a ServiceAccount with a bearer token from the TokenRequest API, as the
 * operator's pod would with its projected token. The CA is embedded, so the file alone is enough (in a container).
 */
export async function writeServiceAccountKubeconfig(
  kc: KubeConfig,
  path: string,
  sa: { namespace: string; name: string },
  server: string,
  caFile: string,
): Promise<string> {
  const token = await kc.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({
    name: sa.name,
    namespace: sa.namespace,
    body: { spec: { audiences: [], expirationSeconds: 3600 } },
  });
  const ca = await readFile(caFile);
  const user = `system:serviceaccount:${sa.namespace}:${sa.name}`;
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "local", cluster: { server, "certificate-authority-data": ca.toString("base64") } }],
    users: [{ name: user, user: { token: token.status?.token ?? "" } }],
    contexts: [{ name: "local", context: { cluster: "local", user } }],
    "current-context": "local",
  };
  // Readable by anyone: the operator image runs as uid 65532 and reads it through a bind mount.
  await writeFile(path, stringify(config), { mode: 0o644 });
  return path;
}

const MAIN = resolve(fileURLToPath(import.meta.url), "../../../operator/src/main.js");

/**
 * Starts `node dist/operator/src/main.js` with `KUBECONFIG` set to `kubeconfig` and nothing else from the test's
 * environment, so the operator has exactly the rights of that kubeconfig. Its log goes to `logFile`.
 */
export function startOperatorAs(kubeconfig: string, logFile: string, flags: readonly string[]): ManagedProcess {
  return ManagedProcess.start({
    name: "operator",
    binary: process.execPath,
    logFile,
    args: [MAIN, "--log-level=debug", ...flags],
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", KUBECONFIG: kubeconfig },
  });
}

/**
 * Lines of an operator log where RBAC refused a request (`… is forbidden: User "system:serviceaccount:…" cannot create
 * resource "pods" …`): a verb missing from the chart's ClusterRole or Role. Other 403s, such as writing into a
 * namespace that is being deleted, are not the chart's business.
 */
export function rbacDenials(lines: readonly string[]): string[] {
  return lines.filter((l) => /is forbidden: User .*system:serviceaccount:.* cannot [a-z]+ resource/.test(l));
}

/** {@link rbacDenials} in a log file (none when the file does not exist yet). */
export function rbacDenialsIn(logFile: string): string[] {
  return rbacDenials(existsSync(logFile) ? readFileSync(logFile, "utf8").split("\n") : []);
}

/**
 * The objects of a release still in the cluster, as `Kind/name` (found by the `app.kubernetes.io/instance` label);
 * Roles and RoleBindings of the `watched` namespaces as `Kind/namespace/name`.
 */
export async function releaseObjects(
  kc: KubeConfig,
  release: string,
  namespace: string,
  watched: readonly string[] = [],
): Promise<string[]> {
  const labelSelector = `app.kubernetes.io/instance=${release}`;
  const core = kc.makeApiClient(CoreV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
  const named = (kind: string, items: { metadata?: { name?: string } }[]): string[] =>
    items.map((o) => `${kind}/${o.metadata?.name ?? ""}`);
  const lists = await Promise.all([
    apps.listNamespacedDeployment({ namespace, labelSelector }).then((l) => named("Deployment", l.items)),
    core.listNamespacedServiceAccount({ namespace, labelSelector }).then((l) => named("ServiceAccount", l.items)),
    core.listNamespacedService({ namespace, labelSelector }).then((l) => named("Service", l.items)),
    core.listNamespacedConfigMap({ namespace, labelSelector }).then((l) => named("ConfigMap", l.items)),
    rbac.listNamespacedRole({ namespace, labelSelector }).then((l) => named("Role", l.items)),
    rbac.listNamespacedRoleBinding({ namespace, labelSelector }).then((l) => named("RoleBinding", l.items)),
    rbac.listClusterRole({ labelSelector }).then((l) => named("ClusterRole", l.items)),
    rbac.listClusterRoleBinding({ labelSelector }).then((l) => named("ClusterRoleBinding", l.items)),
    ...watched.flatMap((ns) => [
      rbac.listNamespacedRole({ namespace: ns, labelSelector }).then((l) => named(`Role/${ns}`, l.items)),
      rbac.listNamespacedRoleBinding({ namespace: ns, labelSelector }).then((l) => named(`RoleBinding/${ns}`, l.items)),
    ]),
  ]);
  return lists.flat().sort();
}
