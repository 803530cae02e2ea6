import { join } from "node:path";
import { hackBinary } from "./binaries.js";
import { httpGet } from "./https-probe.js";
import type { ManagedProcess, ProcessGroup } from "./managed-process.js";
import type { Pki } from "./pki.js";
import { freePort } from "./ports.js";

const READY_TIMEOUT_MS = 60_000;

/** Starts etcd on loopback with its data in `dir`, and waits until it reports healthy. */
export async function startEtcd(dir: string, group: ProcessGroup): Promise<{ process: ManagedProcess; url: string }> {
  const [client, peer] = await Promise.all([freePort(), freePort()]);
  const url = `http://127.0.0.1:${client}`;
  const etcd = group.start({
    name: "etcd",
    binary: hackBinary("etcd"),
    logFile: join(dir, "etcd.log"),
    args: [
      "--name=test",
      `--data-dir=${join(dir, "etcd")}`,
      `--listen-client-urls=${url}`,
      `--advertise-client-urls=${url}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-cluster=test=http://127.0.0.1:${peer}`,
      // A throwaway test store: durability buys nothing here and fsync dominates start-up and write latency.
      "--unsafe-no-fsync",
      "--quota-backend-bytes=4294967296",
      "--log-level=warn",
    ],
  });
  await etcd.waitReady(
    async () => (await httpGet(`${url}/health`)).body.includes('"health":"true"'),
    READY_TIMEOUT_MS,
    "Is the port free and the data directory writable?",
  );
  return { process: etcd, url };
}

/**
 * Starts kube-apiserver with RBAC, PodSecurity and a discoverable ServiceAccount issuer (and `extraArgs`); waits for
 * /readyz.
 */
export async function startApiServer(
  dir: string,
  group: ProcessGroup,
  pki: Pki,
  etcdUrl: string,
  samePort?: number,
  extraArgs: readonly string[] = [],
): Promise<{ process: ManagedProcess; url: string; port: number }> {
  const port = samePort ?? (await freePort());
  const url = `https://127.0.0.1:${port}`;
  const apiserver = group.start({
    name: "kube-apiserver",
    binary: hackBinary("kube-apiserver"),
    logFile: join(dir, "kube-apiserver.log"),
    args: [
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${port}`,
      `--etcd-servers=${etcdUrl}`,
      `--client-ca-file=${pki.caCert}`,
      `--tls-cert-file=${pki.serverCert}`,
      `--tls-private-key-file=${pki.serverKey}`,
      "--authorization-mode=RBAC",
      // PodSecurity is on by default; named so the intent is visible. Privileged pods are allowed by the API server
      // so that it is PodSecurity admission, not the global switch, that refuses them in restricted namespaces.
      "--enable-admission-plugins=PodSecurity",
      "--allow-privileged=true",
      // The issuer URL is this API server, which serves /.well-known/openid-configuration and /openid/v1/jwks:
      // projected ServiceAccount tokens are real RS256 JWTs that anyone can verify against the published keys.
      `--service-account-issuer=${url}`,
      `--service-account-key-file=${pki.serviceAccountPub}`,
      `--service-account-signing-key-file=${pki.serviceAccountKey}`,
      "--service-cluster-ip-range=10.96.0.0/16",
      "--enable-priority-and-fairness=false",
      "--profiling=false",
      "--event-ttl=2h",
      "--max-requests-inflight=2000",
      "--max-mutating-requests-inflight=1000",
      ...extraArgs,
    ],
  });
  const tls = { ca: pki.caCert, cert: pki.adminCert, key: pki.adminKey };
  await apiserver.waitReady(
    async () => (await httpGet(`${url}/readyz`, tls)).status === 200,
    READY_TIMEOUT_MS,
    "Check that etcd is reachable and the certificates were generated.",
  );
  return { process: apiserver, url, port };
}

/**
 * Starts kube-controller-manager (garbage collector, ServiceAccounts, …) and kube-scheduler (with `schedulerArgs`
 * added to its flags); waits for /healthz.
 */
export async function startControllers(
  dir: string,
  group: ProcessGroup,
  pki: Pki,
  kubeconfig: string,
  schedulerArgs: readonly string[] = [],
): Promise<ManagedProcess[]> {
  const [kcmPort, schedPort] = await Promise.all([freePort(), freePort()]);
  const common = [`--kubeconfig=${kubeconfig}`, "--bind-address=127.0.0.1", "--leader-elect=false"];
  const kcm = group.start({
    name: "kube-controller-manager",
    binary: hackBinary("kube-controller-manager"),
    logFile: join(dir, "kube-controller-manager.log"),
    args: [
      ...common,
      `--secure-port=${kcmPort}`,
      `--service-account-private-key-file=${pki.serviceAccountKey}`,
      `--root-ca-file=${pki.caCert}`,
      "--use-service-account-credentials=false",
      "--kube-api-qps=200",
      "--kube-api-burst=400",
      "--concurrent-gc-syncs=30",
    ],
  });
  const scheduler = group.start({
    name: "kube-scheduler",
    binary: hackBinary("kube-scheduler"),
    logFile: join(dir, "kube-scheduler.log"),
    args: [...common, `--secure-port=${schedPort}`, ...schedulerArgs],
  });
  await Promise.all([
    kcm.waitReady(async () => (await httpGet(`https://127.0.0.1:${kcmPort}/healthz`)).status === 200, READY_TIMEOUT_MS),
    scheduler.waitReady(
      async () => (await httpGet(`https://127.0.0.1:${schedPort}/healthz`)).status === 200,
      READY_TIMEOUT_MS,
    ),
  ]);
  return [kcm, scheduler];
}
