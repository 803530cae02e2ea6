import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Paths of the generated certificates and keys of one test cluster. */
export interface Pki {
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  adminCert: string;
  adminKey: string;
  /** RSA key the API server signs ServiceAccount tokens with (RS256, published as its OIDC JWKS). */
  serviceAccountKey: string;
  serviceAccountPub: string;
}

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  try {
    await run("openssl", args, { cwd });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? "";
    throw new Error(`openssl ${args[0] ?? ""} failed while generating the test cluster's certificates: ${stderr}`, {
      cause: err,
    });
  }
}

async function signedCert(dir: string, name: string, subject: string, extensions: string): Promise<void> {
  await openssl(
    ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject],
    dir,
  );
  await writeFile(join(dir, `${name}.ext`), extensions);
  await openssl(
    [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "30",
      "-out",
      `${name}.crt`,
      "-extfile",
      `${name}.ext`,
    ],
    dir,
  );
}

/**
 * Generates a CA, the API server's serving certificate (valid for 127.0.0.1 and the in-cluster names), an admin
 * client certificate in `system:masters`, and the ServiceAccount signing key. Fresh per cluster: nothing is reused.
 */
export async function generatePki(dir: string): Promise<Pki> {
  await openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.crt",
      "-days",
      "30",
      "-subj",
      "/CN=buildkite-operator-test-ca",
    ],
    dir,
  );
  const server = Promise.resolve().then(() =>
    signedCert(
      dir,
      "apiserver",
      "/CN=kube-apiserver",
      "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n" +
        "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    ),
  );
  const admin = signedCert(
    dir,
    "admin",
    "/O=system:masters/CN=test-admin",
    "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
  );
  const sa = openssl(["genrsa", "-out", "sa.key", "2048"], dir).then(() =>
    openssl(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir),
  );
  await Promise.all([server, admin, sa]);
  const p = (f: string): string => join(dir, f);
  return {
    caCert: p("ca.crt"),
    caKey: p("ca.key"),
    serverCert: p("apiserver.crt"),
    serverKey: p("apiserver.key"),
    adminCert: p("admin.crt"),
    adminKey: p("admin.key"),
    serviceAccountKey: p("sa.key"),
    serviceAccountPub: p("sa.pub"),
  };
}
