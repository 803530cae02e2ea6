/**
 * What one credentials check found, before it is turned into a condition. Produced by the I/O shell
 * (`credentials-check.ts`), consumed by the pure policy (`credentials-policy.ts`).
 */
export type CheckOutcome =
  /** STS handed out credentials for the role. */
  | { kind: "assumed"; assumedRoleArn: string; expiration: Date | undefined; issuer: string | undefined }
  /** STS refused with an error only a change of configuration fixes (AccessDenied, InvalidIdentityToken, …). */
  | { kind: "refused"; code: string; message: string; issuer: string | undefined }
  /** STS could not be asked or answered that it could not answer now: unreachable, timeout, throttled, 5xx. */
  | { kind: "unavailable"; code: string; detail: string; issuer: string | undefined }
  /** The queue's ServiceAccount does not exist (yet): the queue controller creates it. */
  | { kind: "noServiceAccount" }
  /** The API server refused the TokenRequest; `status` is its HTTP status, if it answered. */
  | { kind: "tokenRequestFailed"; status: number | undefined; message: string };

/** What a check is about, for messages. */
export interface CheckTarget {
  namespace: string;
  /** The queue's resource name. */
  name: string;
  serviceAccount: string;
  roleArn: string;
  region: string;
  audience: string;
  /** The STS endpoint asked, for messages (the regional AWS endpoint unless configured). */
  endpoint: string;
}
