import { createPublicKey, verify, type JsonWebKey } from "node:crypto";
import { invalidIdentityToken } from "./errors.js";

/** One key of a JSON Web Key Set (RFC 7517), as an OIDC provider publishes it. */
export interface Jwk extends JsonWebKey {
  kid?: string;
  alg?: string;
  use?: string;
}

/** A JSON Web Key Set: what `/openid/v1/jwks` (the `jwks_uri` of the discovery document) serves. */
export interface Jwks {
  keys: Jwk[];
}

/** The registered claims STS looks at; the rest (e.g. `kubernetes.io`) pass through untouched. */
export interface JwtClaims {
  iss?: unknown;
  sub?: unknown;
  aud?: unknown;
  exp?: unknown;
  nbf?: unknown;
  iat?: unknown;
  [claim: string]: unknown;
}

/** A compact JWS split into its parts; nothing in it is trusted until {@link verifyRs256} says so. */
export interface ParsedJwt {
  header: { alg?: unknown; kid?: unknown; typ?: unknown };
  claims: JwtClaims;
  /** `base64url(header) + "." + base64url(payload)`: the bytes the signature covers. */
  signingInput: string;
  signature: Buffer;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

/** Splits and decodes a compact JWS (RFC 7515 §7.1); anything else is an InvalidIdentityToken, as STS answers. */
export function parseJwt(token: string): ParsedJwt {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts.every((p) => BASE64URL.test(p))) {
    throw invalidIdentityToken(
      "The web identity token is not a JSON Web Token (three base64url parts separated by dots)",
    );
  }
  const [header = "", payload = "", signature = ""] = parts;
  const decode = (part: string, what: string): Record<string, unknown> => {
    try {
      const value: unknown = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
      if (typeof value === "object" && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
    } catch {
      // reported below, the same as a non-object
    }
    throw invalidIdentityToken(`The web identity token's ${what} is not a JSON object`);
  };
  return {
    header: decode(header, "header"),
    claims: decode(payload, "payload"),
    signingInput: `${header}.${payload}`,
    signature: Buffer.from(signature, "base64url"),
  };
}

/**
 * Whether an RS256 key of `jwks` signed the token: the key named by the header's `kid`, or, without a `kid`, any RSA
 * key. `"noKey"` when no key fits (the caller may refresh the set once and try again). Other algorithms are refused:
 * IAM OIDC providers accept RS256 (and ES384, which a Kubernetes API server does not issue here).
 */
export function verifyRs256(jwt: ParsedJwt, jwks: Jwks): boolean | "noKey" {
  if (jwt.header.alg !== "RS256") return false;
  const kid = typeof jwt.header.kid === "string" ? jwt.header.kid : undefined;
  const candidates = jwks.keys.filter(
    (k) => k.kty === "RSA" && (kid === undefined || k.kid === kid) && (k.use === undefined || k.use === "sig"),
  );
  if (candidates.length === 0) return "noKey";
  return candidates.some((jwk) => {
    try {
      return verify(
        "sha256",
        Buffer.from(jwt.signingInput),
        createPublicKey({ key: jwk, format: "jwk" }),
        jwt.signature,
      );
    } catch {
      return false;
    }
  });
}

/** The token's audiences: `aud` is a string or an array of strings (RFC 7519 §4.1.3). */
export function audiences(claims: JwtClaims): string[] {
  if (typeof claims.aud === "string") return [claims.aud];
  if (Array.isArray(claims.aud)) return claims.aud.filter((a): a is string => typeof a === "string");
  return [];
}

/** A NumericDate claim in milliseconds, or undefined when absent or not a number. */
export function numericDateMs(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value * 1000 : undefined;
}
