import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { assumeRole, validateRequest, type RoleSpec } from "./assume.js";
import { StsError } from "./errors.js";
import { KeyCache, type JwksSource } from "./jwks.js";
import { parseJwt } from "./jwt.js";
import { assumeRoleResponseXml, errorResponseXml } from "./xml.js";

/** Options for {@link FakeSts.start}. */
export interface FakeStsOptions {
  /** The OIDC issuer registered as an identity provider (`iss` of the tokens it accepts), e.g. the API server's URL. */
  issuer: string;
  /** The issuer's signing keys: a function, or a JWKS URL (see `oidcDiscovery` for the way IAM finds them). */
  jwks: JwksSource;
  /** STS's idea of now (default the wall clock); {@link FakeSts.setClockSkew} moves it further. */
  clock?: { nowMs(): number };
  /** Port on 127.0.0.1 (default any free one). */
  port?: number;
}

/** A scripted misbehaviour for the next requests (see {@link FakeSts.injectFault}). */
export type StsFault =
  /** Answer with this AWS error instead, e.g. `Throttling` (400) or `InternalFailure` (500). */
  | { kind: "error"; status: number; code: string; message?: string }
  /** Accept the request and never answer (until the fake is stopped or set down). */
  | { kind: "hang" }
  /** Drop the connection without an answer. */
  | { kind: "reset" };

/** How the fake is down: the port refuses connections, or STS answers 503 ServiceUnavailable. */
export type DownMode = "refuse" | "unavailable";

/** One request as the fake saw it. The web identity token is never kept, only the claims that are not secret. */
export interface StsRequestRecord {
  at: Date;
  method: string;
  action: string | undefined;
  roleArn: string | undefined;
  roleSessionName: string | undefined;
  durationSeconds: number | undefined;
  /** The token's `sub`, if it parsed (unverified). */
  subject: string | undefined;
  status: number;
  /** The error code answered, or undefined on success. */
  code: string | undefined;
  requestId: string;
}

/**
 * A fake AWS STS serving `AssumeRoleWithWebIdentity` on the Query API (POST form or GET query), with AWS's XML
 * responses and error codes. Tokens are verified for real: RS256 against the issuer's published keys, `iss`, `aud`,
 * `exp` and `nbf`, then each role's trust policy (allowed subjects). Faults, downtime and a skewed clock are
 * switchable, and every request is logged without its token.
 */
export class FakeSts {
  readonly url: string;
  private readonly roles = new Map<string, RoleSpec>();
  private readonly log: StsRequestRecord[] = [];
  private readonly faults: StsFault[] = [];
  private readonly hanging = new Set<ServerResponse>();
  private readonly keys: KeyCache;
  private skewMs = 0;
  private down: DownMode | undefined;

  private constructor(
    private readonly server: Server,
    private readonly port: number,
    private readonly options: FakeStsOptions,
  ) {
    this.url = `http://127.0.0.1:${String(port)}`;
    this.keys = new KeyCache(options.jwks);
  }

  static async start(options: FakeStsOptions): Promise<FakeSts> {
    const server = createServer();
    await listen(server, options.port ?? 0);
    const fake = new FakeSts(server, (server.address() as AddressInfo).port, options);
    server.on("request", (req, res) => {
      void fake.handle(req, res);
    });
    return fake;
  }

  /** Adds (or replaces) a role and its trust policy. */
  addRole(role: RoleSpec): void {
    this.roles.set(role.arn, role);
  }

  removeRole(arn: string): void {
    this.roles.delete(arn);
  }

  /** Takes STS down (refusing connections, or answering 503) or brings it back on the same port. */
  async setDown(down: boolean, mode: DownMode = "refuse"): Promise<void> {
    const wasRefusing = this.down === "refuse";
    this.down = down ? mode : undefined;
    this.dropHanging();
    if (down && mode === "refuse" && !wasRefusing) {
      const closed = new Promise<void>((resolve) =>
        this.server.close(() => {
          resolve();
        }),
      );
      this.server.closeAllConnections();
      await closed;
    } else if (wasRefusing && this.down !== "refuse") {
      await listen(this.server, this.port);
    }
  }

  /** Applies `fault` to the next `times` requests, after any faults already queued. */
  injectFault(fault: StsFault, times = 1): void {
    for (let i = 0; i < times; i++) this.faults.push(fault);
  }

  clearFaults(): void {
    this.faults.length = 0;
  }

  /** Moves STS's clock by `ms` relative to the configured clock (positive: STS thinks it is later). */
  setClockSkew(ms: number): void {
    this.skewMs = ms;
  }

  /** Why the issuer's keys could not be fetched the last time that failed, if it did (for diagnosing a test). */
  keyFetchError(): Error | undefined {
    return this.keys.lastError;
  }

  /** Every request so far, oldest first. */
  requests(): readonly StsRequestRecord[] {
    return [...this.log];
  }

  async stop(): Promise<void> {
    this.dropHanging();
    if (this.down === "refuse") return;
    const closed = new Promise<void>((resolve) =>
      this.server.close(() => {
        resolve();
      }),
    );
    this.server.closeAllConnections();
    await closed;
  }

  private nowMs(): number {
    return (this.options.clock?.nowMs() ?? Date.now()) + this.skewMs;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const record: StsRequestRecord = {
      at: new Date(this.nowMs()),
      method: req.method ?? "",
      action: undefined,
      roleArn: undefined,
      roleSessionName: undefined,
      durationSeconds: undefined,
      subject: undefined,
      status: 0,
      code: undefined,
      requestId,
    };
    this.log.push(record);
    try {
      const params = await readParams(req);
      record.action = params.get("Action") ?? undefined;
      record.roleArn = params.get("RoleArn") ?? undefined;
      record.roleSessionName = params.get("RoleSessionName") ?? undefined;
      const duration = params.get("DurationSeconds");
      record.durationSeconds = duration === null ? undefined : Number(duration);
      record.subject = subjectOf(params.get("WebIdentityToken"));
      if (this.down === "unavailable")
        throw new StsError(503, "ServiceUnavailable", "Service is unavailable. Please try again later.");
      const fault = this.faults.shift();
      if (fault?.kind === "hang") {
        record.code = "(hang)";
        this.hanging.add(res);
        res.on("close", () => this.hanging.delete(res));
        return;
      }
      if (fault?.kind === "reset") {
        record.code = "(reset)";
        req.socket.destroy();
        return;
      }
      if (fault?.kind === "error") throw new StsError(fault.status, fault.code, fault.message ?? fault.code);
      this.reply(res, 200, assumeRoleResponseXml(await this.dispatch(params), requestId), requestId);
      record.status = 200;
    } catch (err) {
      const sts =
        err instanceof StsError
          ? err
          : new StsError(
              500,
              "InternalFailure",
              "The request processing has failed because of an unknown error, exception or failure.",
              { cause: err },
            );
      record.status = sts.status;
      record.code = sts.code;
      this.reply(res, sts.status, errorResponseXml(sts, requestId), requestId);
    }
  }

  private async dispatch(params: URLSearchParams): Promise<Awaited<ReturnType<typeof assumeRole>>["result"]> {
    const action = params.get("Action");
    if (action === null) throw new StsError(400, "MissingAction", "Missing Action");
    const version = params.get("Version");
    if (action !== "AssumeRoleWithWebIdentity" || version !== "2011-06-15") {
      throw new StsError(
        400,
        "InvalidAction",
        `Could not find operation ${action} for version ${version ?? "NO_VERSION_SPECIFIED"}`,
      );
    }
    const request = validateRequest(params);
    const { result } = await assumeRole(request, {
      issuer: this.options.issuer,
      keys: this.keys,
      roles: this.roles,
      nowMs: this.nowMs(),
    });
    return result;
  }

  private reply(res: ServerResponse, status: number, body: string, requestId: string): void {
    res.writeHead(status, {
      "content-type": "text/xml",
      "x-amzn-requestid": requestId,
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  }

  private dropHanging(): void {
    for (const res of this.hanging) res.destroy();
    this.hanging.clear();
  }
}

async function listen(server: Server, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/** The Query API's parameters: the query string, plus a form-encoded body on POST. */
async function readParams(req: IncomingMessage): Promise<URLSearchParams> {
  const params = new URL(req.url ?? "/", "http://sts").searchParams;
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  if (req.method === "POST") {
    const type = req.headers["content-type"] ?? "";
    if (!type.startsWith("application/x-www-form-urlencoded")) {
      throw new StsError(
        400,
        "ValidationError",
        `Unsupported content type ${type || "(none)"}; expected application/x-www-form-urlencoded`,
      );
    }
    for (const [k, v] of new URLSearchParams(Buffer.concat(chunks).toString("utf8"))) params.append(k, v);
  } else if (req.method !== "GET") {
    throw new StsError(405, "MethodNotAllowed", `Method ${req.method ?? ""} is not allowed`);
  }
  return params;
}

function subjectOf(token: string | null): string | undefined {
  if (token === null) return undefined;
  try {
    const sub = parseJwt(token).claims.sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}
