import { expect } from "chai";
import { classifyStsError, hintFor } from "./sts-errors.js";

/** Errors shaped as @aws-sdk/client-sts throws them (checked against the real SDK in test/fake-sts/server.test.ts). */
function sdkError(
  name: string,
  code: string,
  status: number,
  message: string,
  fault: "client" | "server" = "client",
): Error {
  return Object.assign(new Error(message), {
    name,
    Code: code,
    $fault: fault,
    $metadata: { httpStatusCode: status, attempts: 1 },
  });
}
const ISS = "https://oidc.example.com/id/ABC";
const TARGET = {
  namespace: "ci",
  serviceAccount: "bkq-linux",
  roleArn: "arn:aws:iam::123456789012:role/ci",
  audience: "sts.amazonaws.com",
  region: "eu-west-1",
};

describe("classifyStsError", () => {
  it("takes STS refusals as they are, keyed by the Query API's error code", () => {
    expect(
      classifyStsError(
        sdkError("AccessDenied", "AccessDenied", 403, "Not authorized to perform sts:AssumeRoleWithWebIdentity"),
        ISS,
      ),
    ).to.deep.equal({
      kind: "refused",
      code: "AccessDenied",
      message: "Not authorized to perform sts:AssumeRoleWithWebIdentity",
      issuer: ISS,
    });
    expect(
      classifyStsError(
        sdkError("InvalidIdentityTokenException", "InvalidIdentityToken", 400, "Incorrect token audience"),
        ISS,
      ),
    ).to.include({ kind: "refused", code: "InvalidIdentityToken" });
    expect(
      classifyStsError(sdkError("ExpiredTokenException", "ExpiredTokenException", 400, "Token expired"), undefined),
    ).to.include({ kind: "refused", code: "ExpiredTokenException" });
  });

  it("falls back to the error's name when there is no Code", () => {
    const err = Object.assign(new Error("denied"), {
      name: "RegionDisabledException",
      $metadata: { httpStatusCode: 403 },
    });
    expect(classifyStsError(err, undefined)).to.include({ kind: "refused", code: "RegionDisabledException" });
  });

  it("counts throttling, 5xx and server faults as unavailable, whatever the code", () => {
    expect(classifyStsError(sdkError("Throttling", "Throttling", 400, "Rate exceeded"), ISS)).to.include({
      kind: "unavailable",
      code: "Throttling",
    });
    expect(
      classifyStsError(sdkError("ServiceUnavailable", "ServiceUnavailable", 503, "down", "server"), ISS),
    ).to.include({ kind: "unavailable" });
    expect(classifyStsError(sdkError("Unknown", "Unknown", 502, "bad gateway"), ISS)).to.include({
      kind: "unavailable",
      code: "Unknown",
    });
    expect(classifyStsError(sdkError("X", "X", 429, "slow down"), ISS)).to.include({ kind: "unavailable" });
    expect(
      classifyStsError(sdkError("IDPCommunicationErrorException", "IDPCommunicationError", 400, "timeout"), ISS),
    ).to.include({ kind: "unavailable", code: "IDPCommunicationError" });
  });

  it("counts an error without an HTTP status as STS not reached, named by its system error code", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), {
      code: "ECONNREFUSED",
      $metadata: { attempts: 1 },
    });
    expect(classifyStsError(refused, ISS)).to.deep.equal({
      kind: "unavailable",
      code: "ECONNREFUSED",
      detail: "connect ECONNREFUSED 127.0.0.1:1",
      issuer: ISS,
    });
    const timeout = Object.assign(new Error("Connection timed out after 10000 ms"), { name: "TimeoutError" });
    expect(classifyStsError(timeout, ISS)).to.include({ kind: "unavailable", code: "TimeoutError" });
    expect(classifyStsError("weird", ISS)).to.include({ kind: "unavailable", code: "Error", detail: "weird" });
  });

  it("keeps condition reasons valid even for odd codes", () => {
    expect(classifyStsError(sdkError("x", "Bad.Code-1", 400, "?"), ISS)).to.include({ code: "BadCode1" });
    expect(classifyStsError(sdkError("x", "123", 400, "?"), ISS)).to.include({ code: "StsError" });
  });
});

describe("hintFor", () => {
  it("spells out the trust policy's sub and aud conditions for AccessDenied", () => {
    expect(hintFor("AccessDenied", TARGET, ISS)).to.equal(
      "The role must exist, and its trust policy must allow sts:AssumeRoleWithWebIdentity for the Federated principal of the OIDC provider https://oidc.example.com/id/ABC, " +
        'with the condition oidc.example.com/id/ABC:sub = "system:serviceaccount:ci:bkq-linux" and oidc.example.com/id/ABC:aud = "sts.amazonaws.com".',
    );
  });

  it("points at the IAM identity provider and the audience for InvalidIdentityToken", () => {
    const hint = hintFor("InvalidIdentityToken", { ...TARGET, audience: "my-aud" }, ISS);
    expect(hint).to.include("https://oidc.example.com/id/ABC must be registered as an IAM OIDC identity provider");
    expect(hint).to.include('include "my-aud" (spec.aws.audience)');
  });

  it("blames the clocks for an expired fresh token, names the region when STS is off there, and says nothing otherwise", () => {
    expect(hintFor("ExpiredTokenException", TARGET, ISS)).to.include("clocks");
    expect(hintFor("RegionDisabledException", TARGET, ISS)).to.include("eu-west-1");
    expect(hintFor("MalformedPolicyDocument", TARGET, ISS)).to.equal("");
  });

  it("still reads when the issuer is unknown", () => {
    expect(hintFor("AccessDenied", TARGET, undefined)).to.include("<the cluster's service account issuer>");
  });
});
