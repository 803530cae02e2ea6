import { AssumeRoleWithWebIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { expect } from "chai";
import { FakeSts } from "./server.js";
import { TestIssuer } from "./test-issuer.js";

const ROLE = "arn:aws:iam::123456789012:role/ci-deploy";

/** The fake spoken to with the real AWS SDK, so its XML is checked against the SDK's own parser. */
describe("fake STS server (with @aws-sdk/client-sts)", function () {
  this.timeout(10_000);
  const issuer = new TestIssuer();
  let sts: FakeSts;
  let client: STSClient;

  const assume = (token: string, roleArn = ROLE) =>
    client.send(
      new AssumeRoleWithWebIdentityCommand({
        RoleArn: roleArn,
        RoleSessionName: "unit",
        WebIdentityToken: token,
        DurationSeconds: 900,
      }),
    );
  async function failure(
    promise: Promise<unknown>,
  ): Promise<Error & { Code?: string; $metadata?: { httpStatusCode?: number } }> {
    try {
      await promise;
    } catch (err) {
      if (err instanceof Error) return err;
      throw err;
    }
    throw new Error("expected the call to fail");
  }
  const form = (params: Record<string, string>) =>
    new URLSearchParams({ Action: "AssumeRoleWithWebIdentity", Version: "2011-06-15", ...params });

  beforeEach(async () => {
    sts = await FakeSts.start({ issuer: issuer.issuer, jwks: () => Promise.resolve(issuer.jwks()) });
    sts.addRole({ arn: ROLE, allowedSubjects: ["system:serviceaccount:ci:bkq-linux"] });
    client = new STSClient({
      region: "eu-west-1",
      endpoint: sts.url,
      maxAttempts: 1,
      credentials: () =>
        Promise.reject(new Error("AssumeRoleWithWebIdentity is unsigned: no credentials should be asked for")),
    });
  });
  afterEach(async () => {
    client.destroy();
    await sts.stop();
  });

  it("answers AWS's success shape, which the SDK parses into credentials", async () => {
    const out = await assume(issuer.token());
    expect(out.Credentials?.AccessKeyId).to.match(/^ASIA/);
    expect(out.Credentials?.SecretAccessKey).to.be.a("string").and.not.be.empty;
    expect(out.Credentials?.SessionToken).to.be.a("string").and.not.be.empty;
    expect(out.Credentials?.Expiration).to.be.instanceOf(Date);
    expect(out.AssumedRoleUser?.Arn).to.equal("arn:aws:sts::123456789012:assumed-role/ci-deploy/unit");
    expect(out).to.deep.include({
      SubjectFromWebIdentityToken: "system:serviceaccount:ci:bkq-linux",
      Audience: "sts.amazonaws.com",
    });
    expect(out.Provider).to.equal("arn:aws:iam::123456789012:oidc-provider/issuer.test");
    expect(out.$metadata.requestId).to.match(/^[0-9a-f-]{36}$/);
  });

  it("answers AWS's error shape: the SDK sees the code, the message and the HTTP status", async () => {
    const denied = await failure(assume(issuer.token({ sub: "system:serviceaccount:ci:other" })));
    expect(denied).to.include({
      name: "AccessDenied",
      Code: "AccessDenied",
      message: "Not authorized to perform sts:AssumeRoleWithWebIdentity",
    });
    expect(denied.$metadata?.httpStatusCode).to.equal(403);
    const invalid = await failure(assume(issuer.token({ aud: "other" })));
    expect(invalid).to.include({ name: "InvalidIdentityTokenException", Code: "InvalidIdentityToken" });
    sts.setClockSkew(3_600_000);
    const expired = await failure(assume(issuer.token()));
    expect(expired).to.include({ name: "ExpiredTokenException", Code: "ExpiredTokenException" });
  });

  it("serves the GET query form, and writes errors as ErrorResponse/Error{Type, Code, Message}/RequestId", async () => {
    const ok = await fetch(
      `${sts.url}/?${form({ RoleArn: ROLE, RoleSessionName: "get", WebIdentityToken: issuer.token() }).toString()}`,
    );
    expect(ok.status).to.equal(200);
    const body = await ok.text();
    expect(body).to.match(
      /^<AssumeRoleWithWebIdentityResponse xmlns="https:\/\/sts.amazonaws.com\/doc\/2011-06-15\/">/,
    );
    expect(body).to.match(/<ResponseMetadata>\s*<RequestId>[0-9a-f-]{36}<\/RequestId>/);
    const bad = await fetch(sts.url, { method: "POST", body: form({ RoleArn: ROLE, RoleSessionName: "post" }) });
    expect(bad.status).to.equal(400);
    expect(await bad.text()).to.match(
      /<ErrorResponse [^>]*>\s*<Error>\s*<Type>Sender<\/Type>\s*<Code>ValidationError<\/Code>\s*<Message>1 validation error detected: Value null at 'webIdentityToken'.*<\/Message>\s*<\/Error>\s*<RequestId>[0-9a-f-]{36}<\/RequestId>\s*<\/ErrorResponse>/s,
    );
    const unknown = await fetch(sts.url, {
      method: "POST",
      body: new URLSearchParams({ Action: "GetCallerIdentity", Version: "2011-06-15" }),
    });
    expect(await unknown.text()).to.include("<Code>InvalidAction</Code>");
  });

  it("logs every request without its token", async () => {
    const token = issuer.token();
    await assume(token);
    await failure(assume(token, "arn:aws:iam::123456789012:role/unknown"));
    const log = sts.requests();
    expect(log.map((r) => [r.action, r.status, r.code, r.roleSessionName, r.subject])).to.deep.equal([
      ["AssumeRoleWithWebIdentity", 200, undefined, "unit", "system:serviceaccount:ci:bkq-linux"],
      ["AssumeRoleWithWebIdentity", 403, "AccessDenied", "unit", "system:serviceaccount:ci:bkq-linux"],
    ]);
    expect(JSON.stringify(log)).not.to.include(token.split(".")[2]);
  });

  it("refuses connections while down, and serves again on the same URL once back", async () => {
    await sts.setDown(true);
    const refused = await failure(assume(issuer.token()));
    expect(refused.$metadata?.httpStatusCode).to.equal(undefined);
    expect((refused as { code?: string }).code).to.equal("ECONNREFUSED");
    await sts.setDown(false);
    expect((await assume(issuer.token())).Credentials).to.not.equal(undefined);
  });

  it("answers 503 ServiceUnavailable in the unavailable mode", async () => {
    await sts.setDown(true, "unavailable");
    const err = await failure(assume(issuer.token()));
    expect(err.$metadata?.httpStatusCode).to.equal(503);
    expect(err).to.include({ Code: "ServiceUnavailable" });
  });

  it("plays injected faults in order, then behaves again", async () => {
    sts.injectFault({ kind: "error", status: 400, code: "Throttling", message: "Rate exceeded" });
    sts.injectFault({ kind: "reset" });
    expect(await failure(assume(issuer.token()))).to.include({ Code: "Throttling", message: "Rate exceeded" });
    const reset = await failure(assume(issuer.token()));
    expect(reset.$metadata?.httpStatusCode).to.equal(undefined);
    expect((await assume(issuer.token())).Credentials).to.not.equal(undefined);
  });

  it("can hang a request, which a client's timeout ends", async () => {
    sts.injectFault({ kind: "hang" });
    const impatient = new STSClient({
      region: "eu-west-1",
      endpoint: sts.url,
      maxAttempts: 1,
      requestHandler: { requestTimeout: 200, throwOnRequestTimeout: true },
      credentials: () => Promise.reject(new Error("unsigned")),
    });
    try {
      const err = await failure(
        impatient.send(
          new AssumeRoleWithWebIdentityCommand({
            RoleArn: ROLE,
            RoleSessionName: "hang",
            WebIdentityToken: issuer.token(),
          }),
        ),
      );
      expect(err.name).to.equal("TimeoutError");
    } finally {
      impatient.destroy();
    }
  });
});
