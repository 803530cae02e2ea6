import { expect } from "chai";
import {
  BACKOFF_BASE_MS,
  eventTypeOf,
  gaugeValueOf,
  planCredentials,
  timelineMessageFor,
} from "./credentials-policy.js";
import type { CheckTarget } from "./outcome.js";

const T: CheckTarget = {
  namespace: "ci",
  name: "linux",
  serviceAccount: "bkq-linux",
  roleArn: "arn:aws:iam::123456789012:role/ci",
  region: "eu-west-1",
  audience: "sts.amazonaws.com",
  endpoint: "https://sts.eu-west-1.amazonaws.com",
};
const SETTINGS = { recheckIntervalMs: 300_000, maxBackoffMs: 300_000 };
const ISS = "https://oidc.example.com";

describe("planCredentials", () => {
  it("is True with the role, the session ARN and the expiry after a success, and re-checks after the interval", () => {
    const plan = planCredentials(
      {
        kind: "assumed",
        assumedRoleArn: "arn:aws:sts::123456789012:assumed-role/ci/s",
        expiration: new Date(Date.UTC(2026, 0, 1, 0, 15)),
        issuer: ISS,
      },
      T,
      0,
      SETTINGS,
    );
    expect(plan.condition).to.deep.equal({
      type: "CredentialsReady",
      status: "True",
      reason: "RoleAssumed",
      message:
        "ServiceAccount ci/bkq-linux assumed role arn:aws:iam::123456789012:role/ci (as arn:aws:sts::123456789012:assumed-role/ci/s); credentials valid until 2026-01-01T00:15:00.000Z.",
    });
    expect(plan.retryInMs).to.equal(300_000);
  });

  it("is False with the STS code as reason and STS's message plus the hint, backing off from 10 s", () => {
    const outcome = {
      kind: "refused",
      code: "AccessDenied",
      message: "Not authorized to perform sts:AssumeRoleWithWebIdentity",
      issuer: ISS,
    } as const;
    const first = planCredentials(outcome, T, 1, SETTINGS);
    expect(first.condition).to.include({ type: "CredentialsReady", status: "False", reason: "AccessDenied" });
    expect(first.condition.message).to.match(
      /^STS refused AssumeRoleWithWebIdentity of role arn:aws:iam::123456789012:role\/ci for ServiceAccount ci\/bkq-linux: Not authorized to perform sts:AssumeRoleWithWebIdentity \(AccessDenied\)\. The role must exist/,
    );
    expect(first.condition.message).to.include('oidc.example.com:sub = "system:serviceaccount:ci:bkq-linux"');
    expect(first.condition.message).to.match(/Checking again in 10 s\.$/);
    expect(first.retryInMs).to.equal(BACKOFF_BASE_MS.refused);
    expect(planCredentials(outcome, T, 3, SETTINGS).retryInMs).to.equal(40_000);
    expect(planCredentials(outcome, T, 20, SETTINGS).retryInMs).to.equal(300_000);
  });

  it("is Unknown StsUnavailable while STS cannot be reached, retrying from 1 s up to the maximum", () => {
    const outcome = {
      kind: "unavailable",
      code: "ECONNREFUSED",
      detail: "connect ECONNREFUSED 127.0.0.1:9",
      issuer: ISS,
    } as const;
    const plan = planCredentials(outcome, T, 1, SETTINGS);
    expect(plan.condition).to.deep.equal({
      type: "CredentialsReady",
      status: "Unknown",
      reason: "StsUnavailable",
      message:
        "Could not get an answer from STS at https://sts.eu-west-1.amazonaws.com (ECONNREFUSED): connect ECONNREFUSED 127.0.0.1:9. Retrying in 1 s.",
    });
    expect(
      [1, 2, 3, 12].map((n) => planCredentials(outcome, T, n, { ...SETTINGS, maxBackoffMs: 60_000 }).retryInMs),
    ).to.deep.equal([1_000, 2_000, 4_000, 60_000]);
  });

  it("says when STS could not reach the cluster's issuer", () => {
    const plan = planCredentials(
      { kind: "unavailable", code: "IDPCommunicationError", detail: "timeout", issuer: ISS },
      T,
      1,
      SETTINGS,
    );
    expect(plan.condition).to.include({ status: "Unknown", reason: "IDPCommunicationError" });
    expect(plan.condition.message).to.include("https://oidc.example.com/.well-known/openid-configuration");
  });

  it("waits for the ServiceAccount, retrying soon however large the maximum backoff", () => {
    const plan = planCredentials({ kind: "noServiceAccount" }, T, 1, SETTINGS);
    expect(plan.condition).to.include({ status: "Unknown", reason: "WaitingForServiceAccount" });
    expect(plan.condition.message).to.equal(
      "Waiting for ServiceAccount ci/bkq-linux, which the queue controller creates, before checking role arn:aws:iam::123456789012:role/ci.",
    );
    expect(
      [1, 2, 6, 50].map((n) => planCredentials({ kind: "noServiceAccount" }, T, n, SETTINGS).retryInMs),
    ).to.deep.equal([500, 1_000, 10_000, 10_000]);
  });

  it("is False TokenRequestForbidden when RBAC refuses the TokenRequest, Unknown for other API errors", () => {
    const forbidden = planCredentials(
      { kind: "tokenRequestFailed", status: 403, message: "forbidden" },
      T,
      1,
      SETTINGS,
    );
    expect(forbidden.condition).to.include({ status: "False", reason: "TokenRequestForbidden" });
    expect(forbidden.condition.message).to.include("create on serviceaccounts/token");
    const other = planCredentials({ kind: "tokenRequestFailed", status: 500, message: "etcd timeout" }, T, 1, SETTINGS);
    expect(other.condition).to.include({ status: "Unknown", reason: "TokenRequestFailed" });
  });
});

describe("credentials Events and timeline", () => {
  it("makes success and waiting Normal Events, everything else a Warning", () => {
    expect(eventTypeOf({ type: "CredentialsReady", status: "True", reason: "RoleAssumed", message: "" })).to.equal(
      "Normal",
    );
    expect(
      eventTypeOf({ type: "CredentialsReady", status: "Unknown", reason: "WaitingForServiceAccount", message: "" }),
    ).to.equal("Normal");
    expect(
      eventTypeOf({ type: "CredentialsReady", status: "Unknown", reason: "StsUnavailable", message: "" }),
    ).to.equal("Warning");
    expect(eventTypeOf({ type: "CredentialsReady", status: "False", reason: "AccessDenied", message: "" })).to.equal(
      "Warning",
    );
  });

  it("sets the credentials_ready gauge from the last answer, and no series before there is one", () => {
    const c = (status: "True" | "False" | "Unknown", reason: string) => ({
      type: "CredentialsReady",
      status,
      reason,
      message: "",
    });
    expect(
      [
        c("True", "RoleAssumed"),
        c("False", "AccessDenied"),
        c("Unknown", "StsUnavailable"),
        c("Unknown", "Checking"),
        c("Unknown", "WaitingForServiceAccount"),
      ].map(gaugeValueOf),
    ).to.deep.equal([true, false, false, undefined, undefined]);
  });

  it("tells the jobs only when the credentials are known to be broken, in one line", () => {
    const broken = timelineMessageFor(
      { type: "CredentialsReady", status: "False", reason: "AccessDenied", message: "…" },
      T,
    );
    expect(broken).to.equal(
      "AWS credentials will not work in this job: ServiceAccount ci/bkq-linux cannot assume role arn:aws:iam::123456789012:role/ci (AccessDenied). See: kubectl describe buildkitequeue linux -n ci",
    );
    expect(broken).not.to.include("\n");
    expect(
      timelineMessageFor({ type: "CredentialsReady", status: "Unknown", reason: "StsUnavailable", message: "" }, T),
    ).to.equal(undefined);
    expect(
      timelineMessageFor({ type: "CredentialsReady", status: "True", reason: "RoleAssumed", message: "" }, T),
    ).to.equal(undefined);
  });
});
