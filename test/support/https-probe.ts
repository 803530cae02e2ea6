import { readFileSync } from "node:fs";
import { request } from "node:https";
import { request as httpRequest } from "node:http";

/** TLS material for {@link httpGet}; omit to skip server verification (components' self-signed health ports). */
export interface ProbeTls {
  ca?: string;
  cert?: string;
  key?: string;
}

/** GETs a URL and returns status and body; never throws for an HTTP status, only for a failed connection. */
export async function httpGet(
  url: string,
  tls?: ProbeTls,
  timeoutMs = 2_000,
): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  const secure = u.protocol === "https:";
  return new Promise((resolve, reject) => {
    const options = secure
      ? {
          ca: tls?.ca ? readFileSync(tls.ca) : undefined,
          cert: tls?.cert ? readFileSync(tls.cert) : undefined,
          key: tls?.key ? readFileSync(tls.key) : undefined,
          rejectUnauthorized: tls?.ca !== undefined,
          timeout: timeoutMs,
        }
      : { timeout: timeoutMs };
    const req = (secure ? request : httpRequest)(u, options, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") });
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${url} timed out after ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}
