import type { CoreV1Api } from "@kubernetes/client-node";
import type { BuildkiteQueue } from "../api/generated/buildkite-queue.js";
import { serviceAccountName } from "../api/names.js";
import { apiMessage, isNotFound, statusCodeOf } from "../kube/field-manager.js";
import type { CheckOutcome, CheckTarget } from "./outcome.js";
import type { StsCaller } from "./sts-caller.js";
import { classifyStsError } from "./sts-errors.js";

/** Lifetime asked of the TokenRequest: the API server's minimum; the token is used once, right away. */
export const TOKEN_EXPIRATION_SECONDS = 600;
/** The audience EKS and IAM expect unless the queue says otherwise (the CRD's default). */
export const DEFAULT_AUDIENCE = "sts.amazonaws.com";

/** What a check of `queue` is about (its `spec.aws` must be set). */
export function checkTarget(queue: BuildkiteQueue, sts: Pick<StsCaller, "endpointFor">): CheckTarget {
  const aws = queue.spec.aws;
  const region = aws?.region ?? "";
  return {
    namespace: queue.metadata.namespace ?? "",
    name: queue.metadata.name ?? "",
    serviceAccount: serviceAccountName(queue),
    roleArn: aws?.roleArn ?? "",
    region,
    audience: aws?.audience || DEFAULT_AUDIENCE,
    endpoint: sts.endpointFor(region, aws?.stsEndpoint),
  };
}

/**
 * Does what a job pod's AWS SDK will do: asks the API server for a token of the queue's ServiceAccount with the
 * queue's audience (TokenRequest, as the kubelet does for the projected volume), then exchanges it at STS. Never
 * throws: every failure is an outcome. The token lives only in this function's scope and is never logged.
 */
export async function checkCredentials(core: CoreV1Api, sts: StsCaller, queue: BuildkiteQueue): Promise<CheckOutcome> {
  const t = checkTarget(queue, sts);
  let token: string;
  try {
    const request = await core.createNamespacedServiceAccountToken({
      name: t.serviceAccount,
      namespace: t.namespace,
      body: { spec: { audiences: [t.audience], expirationSeconds: TOKEN_EXPIRATION_SECONDS } },
    });
    token = request.status?.token ?? "";
  } catch (err) {
    if (isNotFound(err)) return { kind: "noServiceAccount" };
    return { kind: "tokenRequestFailed", status: statusCodeOf(err), message: apiMessage(err) };
  }
  if (token === "")
    return { kind: "tokenRequestFailed", status: undefined, message: "the API server returned no token" };
  const issuer = issuerOf(token);
  try {
    const assumed = await sts.assume(t.region, t.roleArn, token, queue.spec.aws?.stsEndpoint);
    return { kind: "assumed", ...assumed, issuer };
  } catch (err) {
    return classifyStsError(err, issuer);
  }
}

/** The `iss` claim of a JWT, read without verifying (for hints only; STS does the verifying). */
export function issuerOf(token: string): string | undefined {
  try {
    const claims: unknown = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
    const iss = (claims as { iss?: unknown } | null)?.iss;
    return typeof iss === "string" ? iss : undefined;
  } catch {
    return undefined;
  }
}
