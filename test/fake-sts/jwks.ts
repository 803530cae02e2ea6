import { request as httpsRequest } from "node:https";
import { request as httpRequest } from "node:http";
import type { Jwk, Jwks } from "./jwt.js";

/** An HTTPS endpoint serving a JWKS; `ca` is the PEM to trust (the test cluster's own CA). */
export interface JwksUrl {
  url: string;
  ca?: string | Buffer;
  headers?: Record<string, string>;
}

/** Where the fake gets the issuer's signing keys: a function (unit tests) or a URL fetched like IAM would. */
export type JwksSource = (() => Promise<Jwks>) | JwksUrl;

/** GETs a JSON document, failing on any status but 200. */
export async function getJson(
  url: string,
  options: { ca?: string | Buffer; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<unknown> {
  const u = new URL(url);
  const secure = u.protocol === "https:";
  const timeout = options.timeoutMs ?? 5_000;
  return new Promise((resolve, reject) => {
    const req = (secure ? httpsRequest : httpRequest)(
      u,
      {
        // a Kubernetes API server serves the JWKS only as application/jwk-set+json (406 for application/json alone)
        headers: { accept: "application/json, application/jwk-set+json", ...options.headers },
        timeout,
        ...(secure && options.ca !== undefined ? { ca: options.ca } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8");
          if (res.statusCode !== 200) {
            reject(new Error(`GET ${url} answered ${String(res.statusCode)}: ${body.slice(0, 200)}`));
            return;
          }
          try {
            resolve(JSON.parse(body));
          } catch (err) {
            reject(new Error(`GET ${url} did not answer JSON`, { cause: err }));
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`GET ${url} timed out after ${String(timeout)} ms`)));
    req.on("error", reject);
    req.end();
  });
}

function asJwks(value: unknown, from: string): Jwks {
  const keys = (value as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error(`${from} is not a JSON Web Key Set`);
  return { keys: keys.filter((k): k is Jwk => typeof k === "object" && k !== null) };
}

/**
 * Reads an OIDC issuer's keys the way IAM does for an OIDC identity provider: its discovery document at
 * `<issuer>/.well-known/openid-configuration`, then the `jwks_uri` it names. A Kubernetes API server serves both
 * (ServiceAccountIssuerDiscovery) when `--service-account-issuer` is its own URL.
 */
export function oidcDiscovery(issuer: string, tls: { ca?: string | Buffer } = {}): () => Promise<Jwks> {
  return async () => {
    const discoveryUrl = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
    const doc = (await getJson(discoveryUrl, tls)) as { issuer?: unknown; jwks_uri?: unknown } | null;
    if (doc?.issuer !== issuer) throw new Error(`${discoveryUrl} names issuer ${String(doc?.issuer)}, not ${issuer}`);
    if (typeof doc.jwks_uri !== "string") throw new Error(`${discoveryUrl} has no jwks_uri`);
    return asJwks(await getJson(doc.jwks_uri, tls), doc.jwks_uri);
  };
}

/** Fetches a {@link JwksSource}. */
export async function loadJwks(source: JwksSource): Promise<Jwks> {
  if (typeof source === "function") return source();
  const options = {
    ...(source.ca !== undefined ? { ca: source.ca } : {}),
    ...(source.headers ? { headers: source.headers } : {}),
  };
  return asJwks(await getJson(source.url, options), source.url);
}

/**
 * The keys last fetched, refetched when a token names a key the cached set lacks (the issuer rotated its keys), as a
 * relying party caches a JWKS. Concurrent refreshes share one fetch.
 */
export class KeyCache {
  private keys: Jwks | undefined;
  private pending: Promise<Jwks> | undefined;
  /** Why the last fetch failed (cleared by a success): STS never says, a test wants to. */
  lastError: Error | undefined;

  constructor(private readonly source: JwksSource) {}

  /** The cached set, fetched first if there is none or `refresh` is asked for. */
  async get(refresh = false): Promise<Jwks> {
    if (this.keys && !refresh) return this.keys;
    this.pending ??= loadJwks(this.source)
      .then(
        (keys) => {
          this.keys = keys;
          this.lastError = undefined;
          return keys;
        },
        (err: unknown) => {
          this.lastError = err instanceof Error ? err : new Error(String(err));
          throw err;
        },
      )
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }
}
