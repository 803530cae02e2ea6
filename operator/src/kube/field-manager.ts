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

/** The fields of a metav1.Status this module reads. */
interface StatusBody {
  message?: unknown;
  reason?: unknown;
  details?: { name?: unknown; kind?: unknown };
}

/** The metav1.Status the API server answered with, from an `ApiException` body (a JSON string or parsed), if any. */
function statusBody(err: unknown): StatusBody | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const body = (err as { body?: unknown }).body;
  const parsed = typeof body === "string" ? safeParse(body) : body;
  return typeof parsed === "object" && parsed !== null ? parsed : undefined;
}

/** The API server's own message from an `ApiException` body (a metav1.Status), else the error's message. */
export function apiMessage(err: unknown): string {
  const message = statusBody(err)?.message;
  if (typeof message === "string" && message !== "") return message;
  return err instanceof Error ? err.message : String(err);
}

/**
 * Why the API server refused to create an object. `denied`: its authorizer (RBAC) denied the request, so the
 * operator's own Role or ClusterRole lacks the verb — a deployment mistake that fixing the role cures, so the create
 * is retried. `refused`: admission (PodSecurity, a quota, a RuntimeClass, a policy, a webhook) or validation refused
 * this object, and would refuse the same object again.
 */
export type CreateRefusal = "denied" | "refused";

/**
 * Tells an authorization denial of a create from a refusal of the object, by the Status the API server answers with,
 * never its message text. The authorizer answers before the body is read: 403, reason Forbidden, `details` naming the
 * resource and the name in the URL, and a create's URL has none (`{"kind": "pods"}`). Admission names the object
 * (`{"name": "bkj-…", "kind": "pods"}`), validation and admission policies answer 422, and a webhook's own Status
 * names no resource. Only for creates (the URL of any other verb names the object); undefined when `err` is neither
 * a 403 nor a 422.
 */
export function createRefusal(err: unknown): CreateRefusal | undefined {
  const code = statusCodeOf(err);
  if (code === 422) return "refused";
  if (code !== 403) return undefined;
  const status = statusBody(err);
  const details = status?.details;
  if (status?.reason !== "Forbidden" || details === undefined) return "refused";
  const named = typeof details.name === "string" && details.name !== "";
  return !named && typeof details.kind === "string" && details.kind !== "" ? "denied" : "refused";
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
