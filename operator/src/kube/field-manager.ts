/** The one field manager every write of the operator uses, so server-side apply ownership stays with one name. */
export const FIELD_MANAGER = "buildkite-operator";

/** The HTTP status of an error thrown by @kubernetes/client-node (an `ApiException` has `code`), if any. */
export function statusCodeOf(err: unknown): number | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === "number" ? code : undefined;
}

export const isNotFound = (err: unknown): boolean => statusCodeOf(err) === 404;
export const isConflict = (err: unknown): boolean => statusCodeOf(err) === 409;
/** Create of an object that exists: 409 too, told apart from an update conflict by the caller's verb. */
export const isAlreadyExists = isConflict;
/** 422: the API server refused the object as invalid (e.g. admission or a CEL rule). */
export const isInvalid = (err: unknown): boolean => statusCodeOf(err) === 422;
/** 403: RBAC, or an admission plugin such as PodSecurity. */
export const isForbidden = (err: unknown): boolean => statusCodeOf(err) === 403;

/** The API server's own message from an `ApiException` body (a metav1.Status), else the error's message. */
export function apiMessage(err: unknown): string {
  if (typeof err === "object" && err !== null) {
    const body = (err as { body?: unknown }).body;
    const parsed = typeof body === "string" ? safeParse(body) : body;
    if (typeof parsed === "object" && parsed !== null) {
      const message = (parsed as { message?: unknown }).message;
      if (typeof message === "string" && message !== "") return message;
    }
    if (err instanceof Error) return err.message;
  }
  return String(err);
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
