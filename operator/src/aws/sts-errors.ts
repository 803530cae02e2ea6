import type { CheckOutcome } from "./outcome.js";

/**
 * Error codes that mean "not now" rather than "no": STS's throttling codes (`Throttling` is what the Query API
 * answers) and its own transient failures. Anything with a 5xx status or a `server` fault is treated the same.
 */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  "Throttling",
  "ThrottlingException",
  "RequestLimitExceeded",
  "TooManyRequestsException",
  "RequestThrottled",
  "RequestThrottledException",
  "ServiceUnavailable",
  "InternalFailure",
  "InternalError",
  "RequestTimeout",
  "RequestTimeoutException",
  "IDPCommunicationError",
]);

/** The parts of an `@aws-sdk` error the classification reads: structured fields, never the message text. */
interface SdkErrorShape {
  name?: unknown;
  /** The Query API's error code (`ErrorResponse/Error/Code`), e.g. `InvalidIdentityToken`. */
  Code?: unknown;
  /** Node's system error code of a failed connection, e.g. `ECONNREFUSED`. */
  code?: unknown;
  $fault?: unknown;
  $metadata?: { httpStatusCode?: unknown };
  message?: unknown;
}

/** A condition reason is `[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?` (metav1.Condition); STS codes already are. */
function asReason(code: string): string {
  const cleaned = code.replace(/[^A-Za-z0-9_]/g, "");
  return /^[A-Za-z]/.test(cleaned) ? cleaned : "StsError";
}

/**
 * Sorts an error thrown by `STSClient.send(AssumeRoleWithWebIdentityCommand)` into an outcome, by the HTTP status and
 * STS error code it carries: an answer without an HTTP status never reached STS (refused connection, DNS, timeout);
 * throttling and 5xx are transient; any other STS error code is a refusal that needs a change of configuration.
 */
export function classifyStsError(err: unknown, issuer: string | undefined): CheckOutcome {
  const e: SdkErrorShape = typeof err === "object" && err !== null ? err : {};
  const message = typeof e.message === "string" && e.message !== "" ? e.message : String(err);
  const status = typeof e.$metadata?.httpStatusCode === "number" ? e.$metadata.httpStatusCode : undefined;
  const stsCode = typeof e.Code === "string" && e.Code !== "" ? e.Code : typeof e.name === "string" ? e.name : "Error";
  if (status === undefined) {
    const what = typeof e.code === "string" ? e.code : typeof e.name === "string" ? e.name : "Error";
    return { kind: "unavailable", code: asReason(what), detail: message, issuer };
  }
  if (status === 429 || status >= 500 || e.$fault === "server" || TRANSIENT_CODES.has(stsCode)) {
    return { kind: "unavailable", code: asReason(stsCode), detail: `${message} (HTTP ${String(status)})`, issuer };
  }
  return { kind: "refused", code: asReason(stsCode), message, issuer };
}

/** The issuer host as IAM condition keys spell it: the issuer URL without `https://`. */
const issuerKey = (issuer: string): string => issuer.replace(/^https:\/\//, "");

/** What a person should check for an STS refusal, or "" when STS's own message says it all. */
export function hintFor(
  code: string,
  t: { namespace: string; serviceAccount: string; roleArn: string; audience: string; region: string },
  issuer: string | undefined,
): string {
  const iss = issuer ?? "<the cluster's service account issuer>";
  const subject = `system:serviceaccount:${t.namespace}:${t.serviceAccount}`;
  switch (code) {
    case "AccessDenied":
      return `The role must exist, and its trust policy must allow sts:AssumeRoleWithWebIdentity for the Federated principal of the OIDC provider ${iss}, with the condition ${issuerKey(iss)}:sub = "${subject}" and ${issuerKey(iss)}:aud = "${t.audience}".`;
    case "InvalidIdentityToken":
    case "IDPRejectedClaim":
      return `The cluster's OIDC issuer ${iss} must be registered as an IAM OIDC identity provider whose audiences (client IDs) include "${t.audience}" (spec.aws.audience), and AWS must be able to fetch its keys through ${iss}/.well-known/openid-configuration.`;
    case "ExpiredTokenException":
      return "The token was requested just before the call, so the clocks of the API server and AWS disagree: check the control plane's time synchronisation (NTP).";
    case "RegionDisabledException":
      return `STS is not activated in region ${t.region} for the role's account: activate it in the IAM account settings, or choose another spec.aws.region.`;
    case "ValidationError":
      return `Check spec.aws.roleArn (${t.roleArn}) and spec.aws.region (${t.region}).`;
    default:
      return "";
  }
}
