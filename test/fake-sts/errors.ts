/**
 * A refusal as AWS STS words it: the HTTP status, the error code of the Query API's `ErrorResponse`, and whether the
 * caller (`Sender`) or the service (`Receiver`) is at fault.
 */
export class StsError extends Error {
  override readonly name = "StsError";

  /** `Sender` for the caller's fault (4xx), `Receiver` for the service's (5xx). */
  readonly type: "Sender" | "Receiver";

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.type = status >= 500 ? "Receiver" : "Sender";
  }
}

/** AWS's answer when no trust policy of the role lets this token's subject in, or the role does not exist. */
export const accessDenied = (): StsError =>
  new StsError(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity");

/** The token could not be validated: unknown issuer, bad signature, wrong audience, unusable keys. */
export const invalidIdentityToken = (message: string, options?: ErrorOptions): StsError =>
  new StsError(400, "InvalidIdentityToken", message, options);

/** STS's wording for a malformed parameter (the Coral validation message). */
export function validationError(field: string, value: string | undefined, constraint: string): StsError {
  const shown = value === undefined ? "null" : `'${value}'`;
  return new StsError(
    400,
    "ValidationError",
    `1 validation error detected: Value ${shown} at '${field}' failed to satisfy constraint: ${constraint}`,
  );
}
