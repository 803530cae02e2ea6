import { backoffDelayMs } from "../kube/backoff.js";
import type { ConditionUpdate } from "../api/conditions.js";
import type { CheckOutcome, CheckTarget } from "./outcome.js";
import { hintFor } from "./sts-errors.js";

/** The condition type the preflight owns on a BuildkiteQueue. */
export const CREDENTIALS_READY = "CredentialsReady";
/** Reason while the first answer (or the first after a change of spec.aws) is awaited. */
export const CHECKING = "Checking";

/** First delays of each backoff; every further failure doubles the delay, up to the configured maximum. */
export const BACKOFF_BASE_MS = {
  /** STS unreachable, throttled or failing: try again soon, then less and less often. */
  unavailable: 1_000,
  /** STS said no: a person must change IAM, which takes a while; still noticed within minutes once done. */
  refused: 10_000,
  /** The queue controller is about to create the ServiceAccount. */
  noServiceAccount: 500,
  tokenRequestFailed: 1_000,
} as const;
/** A missing ServiceAccount is retried at least this often whatever the maximum backoff: it is expected any moment. */
export const SERVICE_ACCOUNT_RETRY_CAP_MS = 10_000;

/** How often to re-check, and how far failures may push the next attempt out. */
export interface RetrySettings {
  recheckIntervalMs: number;
  maxBackoffMs: number;
}

/** The condition to show and when to check again. */
export interface CredentialsPlan {
  condition: ConditionUpdate;
  retryInMs: number;
}

const seconds = (ms: number): string => `${String(Math.round(ms / 1000))} s`;

/** The condition while an answer is awaited. */
export function checkingCondition(t: CheckTarget): ConditionUpdate {
  return {
    type: CREDENTIALS_READY,
    status: "Unknown",
    reason: CHECKING,
    message: `Checking that ServiceAccount ${t.namespace}/${t.serviceAccount} can assume role ${t.roleArn}.`,
  };
}

/**
 * Turns what a check found into the queue's CredentialsReady condition and the delay until the next check. `failures`
 * counts the failed checks in a row including this one (0 after a success).
 */
export function planCredentials(
  outcome: CheckOutcome,
  t: CheckTarget,
  failures: number,
  settings: RetrySettings,
): CredentialsPlan {
  const sa = `ServiceAccount ${t.namespace}/${t.serviceAccount}`;
  const condition = (status: ConditionUpdate["status"], reason: string, message: string): ConditionUpdate => ({
    type: CREDENTIALS_READY,
    status,
    reason,
    message,
  });
  switch (outcome.kind) {
    case "assumed": {
      const until = outcome.expiration ? `; credentials valid until ${outcome.expiration.toISOString()}` : "";
      return {
        condition: condition(
          "True",
          "RoleAssumed",
          `${sa} assumed role ${t.roleArn} (as ${outcome.assumedRoleArn})${until}.`,
        ),
        retryInMs: settings.recheckIntervalMs,
      };
    }
    case "refused": {
      const retryInMs = backoffDelayMs(failures, BACKOFF_BASE_MS.refused, settings.maxBackoffMs);
      const hint = hintFor(outcome.code, t, outcome.issuer);
      return {
        condition: condition(
          "False",
          outcome.code,
          `STS refused AssumeRoleWithWebIdentity of role ${t.roleArn} for ${sa}: ${outcome.message} (${outcome.code}).${hint ? ` ${hint}` : ""} Checking again in ${seconds(retryInMs)}.`,
        ),
        retryInMs,
      };
    }
    case "unavailable": {
      const retryInMs = backoffDelayMs(failures, BACKOFF_BASE_MS.unavailable, settings.maxBackoffMs);
      if (outcome.code === "IDPCommunicationError") {
        const iss = outcome.issuer ?? "the cluster's service account issuer";
        return {
          condition: condition(
            "Unknown",
            "IDPCommunicationError",
            `STS could not reach the OIDC issuer ${iss} to verify the token: ${outcome.detail}. AWS must be able to fetch ${iss}/.well-known/openid-configuration and its keys. Retrying in ${seconds(retryInMs)}.`,
          ),
          retryInMs,
        };
      }
      return {
        condition: condition(
          "Unknown",
          "StsUnavailable",
          `Could not get an answer from STS at ${t.endpoint} (${outcome.code}): ${outcome.detail}. Retrying in ${seconds(retryInMs)}.`,
        ),
        retryInMs,
      };
    }
    case "noServiceAccount":
      return {
        condition: condition(
          "Unknown",
          "WaitingForServiceAccount",
          `Waiting for ${sa}, which the queue controller creates, before checking role ${t.roleArn}.`,
        ),
        retryInMs: backoffDelayMs(
          failures,
          BACKOFF_BASE_MS.noServiceAccount,
          Math.min(settings.maxBackoffMs, SERVICE_ACCOUNT_RETRY_CAP_MS),
        ),
      };
    case "tokenRequestFailed": {
      const retryInMs = backoffDelayMs(failures, BACKOFF_BASE_MS.tokenRequestFailed, settings.maxBackoffMs);
      if (outcome.status === 403) {
        return {
          condition: condition(
            "False",
            "TokenRequestForbidden",
            `The operator may not request a token for ${sa}: ${outcome.message}. Its Role in the queue's namespace (or its ClusterRole) needs the verb create on serviceaccounts/token. Checking again in ${seconds(retryInMs)}.`,
          ),
          retryInMs,
        };
      }
      const status = outcome.status === undefined ? "" : ` (HTTP ${String(outcome.status)})`;
      return {
        condition: condition(
          "Unknown",
          "TokenRequestFailed",
          `Could not request a token for ${sa}${status}: ${outcome.message}. Retrying in ${seconds(retryInMs)}.`,
        ),
        retryInMs,
      };
    }
  }
}

/** The Event type of a condition: only success and waiting are Normal. */
export const eventTypeOf = (c: ConditionUpdate): "Normal" | "Warning" =>
  c.status === "True" || c.reason === "WaitingForServiceAccount" || c.reason === CHECKING ? "Normal" : "Warning";

/**
 * The `credentials_ready` gauge of a condition: 1 when the role was assumed at the last check, 0 when that check
 * failed (refused or STS unavailable), no series while nothing has been checked yet.
 */
export const gaugeValueOf = (c: ConditionUpdate): boolean | undefined =>
  c.status === "True" ? true : c.reason === CHECKING || c.reason === "WaitingForServiceAccount" ? undefined : false;

/**
 * One line for the timeline of each job of a queue whose credentials are known to be broken (CredentialsReady False);
 * undefined otherwise (a transient STS outage is not the job's problem yet).
 */
export function timelineMessageFor(
  c: ConditionUpdate,
  t: Pick<CheckTarget, "namespace" | "name" | "serviceAccount" | "roleArn">,
): string | undefined {
  if (c.status !== "False") return undefined;
  return `AWS credentials will not work in this job: ServiceAccount ${t.namespace}/${t.serviceAccount} cannot assume role ${t.roleArn} (${c.reason}). See: kubectl describe buildkitequeue ${t.name} -n ${t.namespace}`;
}
