import { writeFile } from "node:fs/promises";
import { stringify } from "yaml";

/** Writes a kubeconfig for `server` authenticating with a client certificate, and returns its path. */
export async function writeKubeconfig(
  path: string,
  server: string,
  tls: { ca: string; cert: string; key: string },
): Promise<string> {
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "local", cluster: { server, "certificate-authority": tls.ca } }],
    users: [{ name: "admin", user: { "client-certificate": tls.cert, "client-key": tls.key } }],
    contexts: [{ name: "local", context: { cluster: "local", user: "admin" } }],
    "current-context": "local",
  };
  await writeFile(path, stringify(config), { mode: 0o600 });
  return path;
}
