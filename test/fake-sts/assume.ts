import { randomBytes } from "node:crypto";
import { accessDenied, invalidIdentityToken, StsError, validationError } from "./errors.js";
import type { KeyCache } from "./jwks.js";
import { audiences, numericDateMs, parseJwt, verifyRs256, type JwtClaims } from "./jwt.js";
import { awsTimestamp, type AssumeRoleResult } from "./xml.js";

/** The audience IAM expects unless a role says otherwise (EKS's default client ID). */
export const DEFAULT_AUDIENCE = "sts.amazonaws.com";

/** An IAM role and the part of its trust policy the fake evaluates. */
export interface RoleSpec {
  arn: string;
  /**
   * Subjects the trust policy lets in (`<issuer>:sub` StringLike), e.g. `system:serviceaccount:ci:bkq-linux`; `*` and
   * `?` match as in IAM's StringLike.
   */
  allowedSubjects: readonly string[];
  /** The client ID the token's `aud` must carry (default {@link DEFAULT_AUDIENCE}). */
  audience?: string;
  /** The role's MaxSessionDuration (default 3600 s, as IAM's). */
  maxSessionDurationSeconds?: number;
}

/** The parameters of one AssumeRoleWithWebIdentity call, validated. */
export interface AssumeRequest {
  roleArn: string;
  roleSessionName: string;
  webIdentityToken: string;
  durationSeconds: number;
}

const ROLE_ARN = /^arn:aws(?:-[a-z]+)*:iam::(\d{12}):role\/(?:[\w+=,.@-]+\/)*([\w+=,.@-]+)$/;
const SESSION_NAME = /^[\w+=,.@-]*$/;

/** Checks the parameters as STS does before it looks at the token (lengths and patterns of the API model). */
export function validateRequest(params: URLSearchParams): AssumeRequest {
  const roleArn = params.get("RoleArn") ?? undefined;
  const roleSessionName = params.get("RoleSessionName") ?? undefined;
  const webIdentityToken = params.get("WebIdentityToken") ?? undefined;
  const duration = params.get("DurationSeconds") ?? undefined;
  if (roleArn === undefined) throw validationError("roleArn", undefined, "Member must not be null");
  if (roleArn.length < 20 || roleArn.length > 2048)
    throw validationError("roleArn", roleArn, "Member must have length between 20 and 2048");
  if (roleSessionName === undefined) throw validationError("roleSessionName", undefined, "Member must not be null");
  if (roleSessionName.length < 2 || roleSessionName.length > 64)
    throw validationError("roleSessionName", roleSessionName, "Member must have length between 2 and 64");
  if (!SESSION_NAME.test(roleSessionName))
    throw validationError(
      "roleSessionName",
      roleSessionName,
      "Member must satisfy regular expression pattern: [\\w+=,.@-]*",
    );
  // the token is never echoed back, not even in an error
  if (webIdentityToken === undefined) throw validationError("webIdentityToken", undefined, "Member must not be null");
  if (webIdentityToken.length < 4 || webIdentityToken.length > 20_000)
    throw validationError("webIdentityToken", "***", "Member must have length between 4 and 20000");
  let durationSeconds = 3600;
  if (duration !== undefined) {
    durationSeconds = /^\d+$/.test(duration) ? Number(duration) : NaN;
    if (!(durationSeconds >= 900 && durationSeconds <= 43_200))
      throw validationError("durationSeconds", duration, "Member must have value between 900 and 43200");
  }
  return { roleArn, roleSessionName, webIdentityToken, durationSeconds };
}

/** What the decision needs besides the request: the registered issuer, its keys, the roles and the time. */
export interface AssumeContext {
  issuer: string;
  keys: KeyCache;
  roles: ReadonlyMap<string, RoleSpec>;
  nowMs: number;
}

/**
 * Decides an AssumeRoleWithWebIdentity the way STS does for an IAM OIDC identity provider: the token's issuer must be
 * the registered provider, its RS256 signature must verify against the provider's published keys, it must be within
 * its validity window and carry the provider's client ID as audience; then the role's trust policy must admit its
 * subject. Returns fresh (fake) credentials, or throws the {@link StsError} AWS would answer with.
 */
export async function assumeRole(
  req: AssumeRequest,
  ctx: AssumeContext,
): Promise<{ result: AssumeRoleResult; claims: JwtClaims }> {
  const arn = ROLE_ARN.exec(req.roleArn);
  if (!arn) throw validationError("roleArn", req.roleArn, "Member must be an IAM role ARN");
  const [, account = "", roleName = ""] = arn;
  const jwt = parseJwt(req.webIdentityToken);
  const { claims } = jwt;
  if (claims.iss !== ctx.issuer) {
    throw invalidIdentityToken(
      `No OpenIDConnect provider found in your account for ${typeof claims.iss === "string" ? claims.iss : "(no iss claim)"}`,
    );
  }
  let verified = verifyRs256(jwt, await ctx.keys.get().catch(unreachableKeys));
  // a key id the cached set lacks: the issuer may have rotated its keys since
  if (verified === "noKey") verified = verifyRs256(jwt, await ctx.keys.get(true).catch(unreachableKeys));
  if (verified === "noKey")
    throw invalidIdentityToken(
      "Couldn't retrieve verification key from your identity provider, please reference AssumeRoleWithWebIdentity documentation for requirements",
    );
  if (!verified)
    throw invalidIdentityToken(
      "The web identity token's signature could not be verified with the identity provider's published keys",
    );
  const exp = numericDateMs(claims.exp);
  if (exp === undefined) throw invalidIdentityToken("The web identity token has no exp claim");
  if (ctx.nowMs >= exp) {
    throw new StsError(
      400,
      "ExpiredTokenException",
      `Token expired: current date/time ${awsTimestamp(new Date(ctx.nowMs))} must be before the expiration date/time ${awsTimestamp(new Date(exp))}`,
    );
  }
  const nbf = numericDateMs(claims.nbf);
  if (nbf !== undefined && ctx.nowMs < nbf)
    throw invalidIdentityToken(`The web identity token is not valid before ${awsTimestamp(new Date(nbf))}`);
  const role = ctx.roles.get(req.roleArn);
  const audience = role?.audience ?? DEFAULT_AUDIENCE;
  if (!audiences(claims).includes(audience)) throw invalidIdentityToken("Incorrect token audience");
  const subject = typeof claims.sub === "string" ? claims.sub : "";
  if (!role || !role.allowedSubjects.some((pattern) => stringLike(pattern, subject))) throw accessDenied();
  if (req.durationSeconds > (role.maxSessionDurationSeconds ?? 3600)) {
    throw new StsError(
      400,
      "ValidationError",
      "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
    );
  }
  const roleId = `AROA${stableId(req.roleArn)}`;
  return {
    claims,
    result: {
      subject,
      audience,
      assumedRoleArn: `arn:aws:sts::${account}:assumed-role/${roleName}/${req.roleSessionName}`,
      assumedRoleId: `${roleId}:${req.roleSessionName}`,
      provider: `arn:aws:iam::${account}:oidc-provider/${ctx.issuer.replace(/^https:\/\//, "")}`,
      credentials: {
        accessKeyId: `ASIA${randomId(16)}`,
        secretAccessKey: randomBytes(30).toString("base64"),
        sessionToken: randomBytes(96).toString("base64"),
        expiration: new Date(Math.floor(ctx.nowMs / 1000) * 1000 + req.durationSeconds * 1000),
      },
    },
  };
}

function unreachableKeys(err: unknown): never {
  throw invalidIdentityToken(
    "Couldn't retrieve verification key from your identity provider, please reference AssumeRoleWithWebIdentity documentation for requirements",
    { cause: err },
  );
}

/** IAM's StringLike: `*` any run of characters, `?` any one; everything else literal. */
export function stringLike(pattern: string, value: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${re}$`, "s").test(value);
}

const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

function randomId(length: number): string {
  return [...randomBytes(length)].map((b) => ID_ALPHABET[b % 32]).join("");
}

/** A role's unique id: the same role ARN always gets the same one, as a real role keeps its id. */
function stableId(arn: string): string {
  let h = 0x811c9dc5;
  let out = "";
  for (let i = 0; out.length < 17; i++) {
    h = Math.imul(h ^ (arn.charCodeAt(i % arn.length) + i), 0x01000193) >>> 0;
    out += ID_ALPHABET[h % 32] ?? "A";
  }
  return out;
}
