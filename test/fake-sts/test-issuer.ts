import { generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import type { Jwk, Jwks, JwtClaims } from "./jwt.js";

/** An OIDC issuer made up for unit tests: a fresh RSA key, its JWKS, and RS256-signed tokens. */
export class TestIssuer {
  readonly kid: string;
  private readonly privateKey: KeyObject;
  private readonly publicJwk: Jwk;

  constructor(
    readonly issuer = "https://issuer.test",
    kid = "test-key-1",
  ) {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    this.kid = kid;
    this.privateKey = privateKey;
    this.publicJwk = { ...publicKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" };
  }

  jwks(): Jwks {
    return { keys: [this.publicJwk] };
  }

  /** A token as a Kubernetes API server issues it for a ServiceAccount, with `claims` overriding the defaults. */
  token(claims: JwtClaims = {}, options: { nowMs?: number; header?: Record<string, unknown> } = {}): string {
    const now = Math.floor((options.nowMs ?? Date.now()) / 1000);
    const payload: JwtClaims = {
      iss: this.issuer,
      sub: "system:serviceaccount:ci:bkq-linux",
      aud: ["sts.amazonaws.com"],
      iat: now,
      nbf: now,
      exp: now + 600,
      ...claims,
    };
    return this.signRaw({ alg: "RS256", kid: this.kid, ...options.header }, payload);
  }

  /** Signs any header and payload with the issuer's key (RS256), whatever they claim. */
  signRaw(header: Record<string, unknown>, payload: JwtClaims): string {
    const input = `${b64(header)}.${b64(payload)}`;
    return `${input}.${sign("sha256", Buffer.from(input), this.privateKey).toString("base64url")}`;
  }
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
