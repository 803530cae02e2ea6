/** Labels and annotations the operator puts on the objects it makes. */
export const LABELS = {
  /** Marks every object the operator manages. */
  managedBy: "app.kubernetes.io/managed-by",
  /** The BuildkiteQueue (resource name) a job pod, ServiceAccount, NetworkPolicy or PVC belongs to. */
  queue: "buildkite.com/queue",
  /** The BuildkiteJob (resource name) a pod runs. */
  job: "buildkite.com/job",
  /** The Buildkite job UUID. */
  jobUuid: "buildkite.com/job-uuid",
  /** Role of the object: "job" for job pods. */
  component: "app.kubernetes.io/component",
  /**
   * Concurrency slot of a cache PVC, and of a job pod: the pod is the record of the slot its job holds until the job's
   * status records it too (a crash between the two must not free the slot).
   */
  slot: "buildkite.com/slot",
  /** On a job pod: the queue's instance shape it was built with, so the vCPU it holds is known from the pod alone. */
  shape: "buildkite.com/shape",
  /**
   * Put by a person on a Secret that holds a Buildkite agent token (value "true"): the operator sends a queue's
   * token to Buildkite only from a Secret so marked, so a queue cannot make it send any other Secret anywhere.
   */
  agentToken: "buildkite.com/agent-token",
  /** The cache volume (its name in the queue's `cache`) a PVC holds. */
  cache: "buildkite.com/cache",
  /** The scope key of a cache PVC (a digest of its pipeline, or pipeline and branch; readable in the annotations). */
  cacheScope: "buildkite.com/cache-scope",
} as const;

export const ANNOTATIONS = {
  /** Hash of the inputs a pod was built from, to see when a running pod differs from what would be built now. */
  specHash: "buildkite.com/spec-hash",
  /** EKS's IRSA annotation on the queue's ServiceAccount. */
  irsaRoleArn: "eks.amazonaws.com/role-arn",
  /** On a BuildkiteJob taken from the Stacks API: the stack that reserved it (and so reports on it to Buildkite). */
  stack: "buildkite.com/stack",
  /** On a BuildkiteJob: the Secret holding its job acquisition token (the pod uses it instead of the queue's token). */
  agentTokenSecret: "buildkite.com/agent-token-secret",
  /** On a BuildkiteJob: the state Buildkite reported when it took the job back (canceled, expired, …). */
  buildkiteState: "buildkite.com/buildkite-state",
  /**
   * On a BuildkiteJob the job source created before Buildkite confirmed its reservation, for a queue whose pods use the
   * cluster agent token (value "Pending"): no pod is created until the job source removes it, and a job Buildkite
   * did not let this stack reserve is deleted, never run.
   */
  reservation: "buildkite.com/reservation",
  /**
   * On a BuildkiteJob that could not run: what the job source's `finish` call told Buildkite, as JSON
   * `{"reason","message"}` (reason `Finished` or `FinishRefused`); the job controller records it as a condition.
   */
  reported: "buildkite.com/reported",
  /** On a BuildkiteJob: why it must stop now (its queue is being deleted); the job controller stops its pod. */
  stop: "buildkite.com/stop",
  /** On a cache PVC: the pipeline (slug) whose jobs share it. Label values cannot hold every slug, annotations can. */
  pipeline: "buildkite.com/pipeline",
  /** On a Branch-scoped cache PVC: the branch whose jobs share it. */
  branch: "buildkite.com/branch",
} as const;

/**
 * On a BuildkiteQueue and its NetworkPolicy: held until the queue's job pods are gone and its stack is deregistered,
 * so deleting a queue never removes the isolation of pods still running.
 */
export const FINALIZER = "buildkite.com/job-pods";

export const MANAGED_BY = "buildkite-operator";
