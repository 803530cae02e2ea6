import { ApiException } from "@kubernetes/client-node";
import { expect } from "chai";
import { apiMessage, createRefusal } from "./field-manager.js";

/** An error as @kubernetes/client-node throws it: the HTTP status, and the API server's metav1.Status as the body. */
const apiError = (code: number, status: object): ApiException<string> =>
  new ApiException(
    code,
    `HTTP-Code: ${code}`,
    JSON.stringify({ kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", code, ...status }),
    {},
  );

// Bodies as kube-apiserver v1.36 answered them in the test cluster (RBAC authorizer, PodSecurity, RuntimeClass and
// ResourceQuota admission, a ValidatingAdmissionPolicy, validation).
const RBAC_CREATE_POD = apiError(403, {
  message:
    'pods is forbidden: User "system:serviceaccount:probe:nobody" cannot create resource "pods" in API group "" in the namespace "probe"',
  reason: "Forbidden",
  details: { kind: "pods" },
});
const RBAC_CREATE_CLAIM = apiError(403, {
  message:
    'persistentvolumeclaims is forbidden: User "system:serviceaccount:probe:nobody" cannot create resource "persistentvolumeclaims" in API group "" in the namespace "probe"',
  reason: "Forbidden",
  details: { kind: "persistentvolumeclaims" },
});
const POD_SECURITY = apiError(403, {
  message:
    'pods "priv" is forbidden: violates PodSecurity "restricted:latest": privileged (container "c" must not set securityContext.privileged=true)',
  reason: "Forbidden",
  details: { name: "priv", kind: "pods" },
});
const RUNTIME_CLASS = apiError(403, {
  message: 'pods "rc" is forbidden: pod rejected: RuntimeClass "no-such-runtime" not found',
  reason: "Forbidden",
  details: { name: "rc", kind: "pods" },
});
const QUOTA_CLAIM = apiError(403, {
  message:
    'persistentvolumeclaims "c2" is forbidden: exceeded quota: q, requested: persistentvolumeclaims=1, used: persistentvolumeclaims=0, limited: persistentvolumeclaims=0',
  reason: "Forbidden",
  details: { name: "c2", kind: "persistentvolumeclaims" },
});
const POLICY = apiError(422, {
  message:
    "configmaps \"cm2\" is forbidden: ValidatingAdmissionPolicy 'deny-cm' with binding 'deny-cm' denied request: no configmaps",
  reason: "Invalid",
  details: {
    name: "cm2",
    kind: "configmaps",
    causes: [{ message: "ValidatingAdmissionPolicy 'deny-cm' with binding 'deny-cm' denied request: no configmaps" }],
  },
});
const INVALID = apiError(422, {
  message: 'Pod "Bad_Name" is invalid: spec.containers: Required value',
  reason: "Invalid",
  details: {
    name: "Bad_Name",
    kind: "Pod",
    causes: [{ reason: "FieldValueRequired", message: "Required value", field: "spec.containers" }],
  },
});
/** A validating webhook's denial: the webhook's own Status, which names no resource (apiserver's ToStatusErr). */
const WEBHOOK = apiError(403, {
  message: 'admission webhook "policy.example.com" denied the request: pods must have a team label',
});

describe("createRefusal", () => {
  it("tells the operator's own RBAC denial of a create (retried) by the unnamed resource the authorizer reports", () => {
    expect(createRefusal(RBAC_CREATE_POD)).to.equal("denied");
    expect(createRefusal(RBAC_CREATE_CLAIM)).to.equal("denied");
  });

  it("tells admission and validation refusals of the object (never retried)", () => {
    for (const err of [POD_SECURITY, RUNTIME_CLASS, QUOTA_CLAIM, POLICY, INVALID, WEBHOOK])
      expect(createRefusal(err), apiMessage(err)).to.equal("refused");
  });

  it("reads the status and details, not the message: a denial worded otherwise is still a denial, and a refusal quoting RBAC's words still a refusal", () => {
    expect(
      createRefusal(apiError(403, { message: "forbidden", reason: "Forbidden", details: { kind: "pods" } })),
    ).to.equal("denied");
    expect(
      createRefusal(
        apiError(403, {
          message: 'x cannot create resource "pods"',
          reason: "Forbidden",
          details: { name: "bkj-1", kind: "pods" },
        }),
      ),
    ).to.equal("refused");
  });

  it("is undefined for anything that is no refusal", () => {
    expect(createRefusal(apiError(409, { reason: "AlreadyExists", details: { name: "p", kind: "pods" } }))).to.equal(
      undefined,
    );
    expect(createRefusal(apiError(500, { reason: "InternalError" }))).to.equal(undefined);
    expect(createRefusal(new Error("socket hang up"))).to.equal(undefined);
  });

  it("accepts a body that is already parsed, and one that is not a Status at all", () => {
    expect(
      createRefusal(
        Object.assign(new Error("forbidden"), { code: 403, body: { reason: "Forbidden", details: { kind: "pods" } } }),
      ),
    ).to.equal("denied");
    expect(createRefusal(new ApiException(403, "Forbidden", "<html>proxy says no</html>", {}))).to.equal("refused");
  });
});

describe("apiMessage", () => {
  it("is the API server's message, else the error's own", () => {
    expect(apiMessage(RUNTIME_CLASS)).to.equal(
      'pods "rc" is forbidden: pod rejected: RuntimeClass "no-such-runtime" not found',
    );
    expect(apiMessage(new Error("socket hang up"))).to.equal("socket hang up");
    expect(apiMessage("plain")).to.equal("plain");
  });
});
