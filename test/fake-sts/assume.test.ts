import { expect } from "chai";
import { assumeRole, stringLike, validateRequest, type AssumeContext, type RoleSpec } from "./assume.js";
import { StsError } from "./errors.js";
import { KeyCache } from "./jwks.js";
import type { Jwks } from "./jwt.js";
import { TestIssuer } from "./test-issuer.js";

const ROLE = "arn:aws:iam::123456789012:role/ci-deploy";
const NOW = Date.UTC(2026, 0, 1, 12);

describe("fake STS: AssumeRoleWithWebIdentity decision", () => {
  const issuer = new TestIssuer();
  const other = new TestIssuer(issuer.issuer, issuer.kid);
  let fetches: number;
  let published: Jwks;

  function context(
    roles: RoleSpec[] = [{ arn: ROLE, allowedSubjects: ["system:serviceaccount:ci:bkq-linux"] }],
    nowMs = NOW,
  ): AssumeContext {
    return {
      issuer: issuer.issuer,
      nowMs,
      roles: new Map(roles.map((r) => [r.arn, r])),
      keys: new KeyCache(() => {
        fetches++;
        return Promise.resolve(published);
      }),
    };
  }
  const request = (token: string, roleArn = ROLE) => ({
    roleArn,
    roleSessionName: "preflight",
    webIdentityToken: token,
    durationSeconds: 900,
  });

  async function refusal(promise: Promise<unknown>): Promise<StsError> {
    try {
      await promise;
    } catch (err) {
      if (err instanceof StsError) return err;
      throw err;
    }
    throw new Error("expected an STS error, got credentials");
  }

  beforeEach(() => {
    fetches = 0;
    published = issuer.jwks();
  });

  it("hands out credentials for a token the issuer signed, to a subject the trust policy names", async () => {
    const { result } = await assumeRole(request(issuer.token({}, { nowMs: NOW })), context());
    expect(result).to.deep.include({
      subject: "system:serviceaccount:ci:bkq-linux",
      audience: "sts.amazonaws.com",
      assumedRoleArn: "arn:aws:sts::123456789012:assumed-role/ci-deploy/preflight",
      provider: "arn:aws:iam::123456789012:oidc-provider/issuer.test",
    });
    expect(result.assumedRoleId).to.match(/^AROA[A-Z2-7]{17}:preflight$/);
    expect(result.credentials.accessKeyId).to.match(/^ASIA[A-Z2-7]{16}$/);
    expect(result.credentials.expiration.getTime()).to.equal(NOW + 900_000);
  });

  it("refuses a token signed by another key with the same key id (InvalidIdentityToken)", async () => {
    const err = await refusal(assumeRole(request(other.token({}, { nowMs: NOW })), context()));
    expect(err).to.include({ status: 400, code: "InvalidIdentityToken" });
    expect(err.message).to.match(/signature/);
  });

  it("refuses a token whose claims were changed after signing", async () => {
    const [h, , s] = issuer.token({}, { nowMs: NOW }).split(".");
    const forged = Buffer.from(
      JSON.stringify({
        iss: issuer.issuer,
        sub: "system:serviceaccount:ci:bkq-linux",
        aud: "sts.amazonaws.com",
        exp: NOW / 1000 + 60,
      }),
    ).toString("base64url");
    expect(await refusal(assumeRole(request(`${h ?? ""}.${forged}.${s ?? ""}`), context()))).to.include({
      code: "InvalidIdentityToken",
    });
  });

  it("refuses algorithms other than RS256, alg none included", async () => {
    const none = `${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from(JSON.stringify({ iss: issuer.issuer })).toString("base64url")}.`;
    expect(await refusal(assumeRole(request(none), context()))).to.include({ code: "InvalidIdentityToken" });
    const hs = issuer.token({}, { nowMs: NOW, header: { alg: "HS256" } });
    expect(await refusal(assumeRole(request(hs), context()))).to.include({ code: "InvalidIdentityToken" });
  });

  it("refuses what is not a JWT, and never echoes the token", async () => {
    const err = await refusal(assumeRole(request("not-a-jwt-secret"), context()));
    expect(err).to.include({ code: "InvalidIdentityToken" });
    expect(err.message).not.to.include("not-a-jwt-secret");
  });

  it("refuses a token of an issuer that is not registered, naming the issuer", async () => {
    const err = await refusal(
      assumeRole(request(issuer.token({ iss: "https://elsewhere.test" }, { nowMs: NOW })), context()),
    );
    expect(err).to.include({
      code: "InvalidIdentityToken",
      message: "No OpenIDConnect provider found in your account for https://elsewhere.test",
    });
  });

  it("refuses a token for another audience, and takes the role's own audience when it has one", async () => {
    expect(await refusal(assumeRole(request(issuer.token({ aud: ["vault"] }, { nowMs: NOW })), context()))).to.include({
      code: "InvalidIdentityToken",
      message: "Incorrect token audience",
    });
    const custom = context([{ arn: ROLE, allowedSubjects: ["*"], audience: "vault" }]);
    expect(
      (await assumeRole(request(issuer.token({ aud: "vault" }, { nowMs: NOW })), custom)).result.audience,
    ).to.equal("vault");
  });

  it("refuses an expired token with ExpiredTokenException, and one not yet valid", async () => {
    const expired = await refusal(assumeRole(request(issuer.token({}, { nowMs: NOW - 601_000 })), context()));
    expect(expired).to.include({ status: 400, code: "ExpiredTokenException" });
    expect(expired.message).to.match(/^Token expired: current date\/time 2026-01-01T12:00:00Z must be before/);
    expect(
      await refusal(assumeRole(request(issuer.token({ nbf: NOW / 1000 + 300 }, { nowMs: NOW })), context())),
    ).to.include({ code: "InvalidIdentityToken" });
  });

  it("denies a subject the trust policy does not name, and a role that does not exist (AccessDenied, 403)", async () => {
    const stranger = issuer.token({ sub: "system:serviceaccount:ci:default" }, { nowMs: NOW });
    expect(await refusal(assumeRole(request(stranger), context()))).to.include({
      status: 403,
      code: "AccessDenied",
      message: "Not authorized to perform sts:AssumeRoleWithWebIdentity",
    });
    expect(
      await refusal(
        assumeRole(request(issuer.token({}, { nowMs: NOW }), "arn:aws:iam::123456789012:role/missing"), context()),
      ),
    ).to.include({ status: 403, code: "AccessDenied" });
  });

  it("matches subjects as IAM's StringLike does", () => {
    expect(stringLike("system:serviceaccount:ci:*", "system:serviceaccount:ci:bkq-linux")).to.be.true;
    expect(stringLike("system:serviceaccount:ci:bkq-?", "system:serviceaccount:ci:bkq-a")).to.be.true;
    expect(stringLike("system:serviceaccount:ci:bkq.linux", "system:serviceaccount:ci:bkqxlinux")).to.be.false;
    expect(stringLike("system:serviceaccount:ci:*", "system:serviceaccount:cd:x")).to.be.false;
  });

  it("refetches the keys once when a token names a key it has not seen (rotation), and caches them otherwise", async () => {
    const ctx = context();
    await assumeRole(request(issuer.token({}, { nowMs: NOW })), ctx);
    await assumeRole(request(issuer.token({}, { nowMs: NOW })), ctx);
    expect(fetches).to.equal(1);
    const rotated = new TestIssuer(issuer.issuer, "test-key-2");
    published = { keys: [...issuer.jwks().keys, ...rotated.jwks().keys] };
    await assumeRole(request(rotated.token({}, { nowMs: NOW })), ctx);
    expect(fetches).to.equal(2);
  });

  it("answers InvalidIdentityToken when the issuer's keys cannot be fetched", async () => {
    const ctx = { ...context(), keys: new KeyCache(() => Promise.reject(new Error("connection refused"))) };
    expect(await refusal(assumeRole(request(issuer.token({}, { nowMs: NOW })), ctx))).to.include({
      code: "InvalidIdentityToken",
      message:
        "Couldn't retrieve verification key from your identity provider, please reference AssumeRoleWithWebIdentity documentation for requirements",
    });
  });

  it("enforces the role's MaxSessionDuration", async () => {
    const err = await refusal(
      assumeRole({ ...request(issuer.token({}, { nowMs: NOW })), durationSeconds: 7200 }, context()),
    );
    expect(err).to.include({ code: "ValidationError" });
  });

  describe("parameter validation (ValidationError, as STS words it)", () => {
    const params = (p: Record<string, string>) =>
      new URLSearchParams({ RoleArn: ROLE, RoleSessionName: "s1", WebIdentityToken: "a.b.c", ...p });
    const validation = (p: URLSearchParams): StsError => {
      try {
        validateRequest(p);
      } catch (err) {
        if (err instanceof StsError) return err;
        throw err;
      }
      throw new Error("expected a ValidationError");
    };

    it("takes a well-formed request, DurationSeconds defaulting to 3600", () => {
      expect(validateRequest(params({}))).to.deep.equal({
        roleArn: ROLE,
        roleSessionName: "s1",
        webIdentityToken: "a.b.c",
        durationSeconds: 3600,
      });
    });

    it("refuses missing parameters, a bad session name and a duration out of range", () => {
      const missing = params({});
      missing.delete("RoleArn");
      expect(validation(missing)).to.include({
        code: "ValidationError",
        message:
          "1 validation error detected: Value null at 'roleArn' failed to satisfy constraint: Member must not be null",
      });
      expect(validation(params({ RoleSessionName: "has space" })).message).to.include("'roleSessionName'");
      expect(validation(params({ DurationSeconds: "60" })).message).to.include("'durationSeconds'");
      expect(validation(params({ DurationSeconds: "abc" })).code).to.equal("ValidationError");
    });

    it("never echoes the token in a validation error", () => {
      expect(validation(params({ WebIdentityToken: "xyz" })).message).not.to.include("xyz");
    });
  });
});
