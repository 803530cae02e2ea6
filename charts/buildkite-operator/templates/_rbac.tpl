{{/*
The operator's rights where it serves queues: over queues and jobs, and the pods, Secrets, ServiceAccounts, claims,
NetworkPolicies and Events it makes for them. A Role with these rules in each watched namespace (the default), or the
ClusterRole in cluster-wide mode: one list, so the two modes never drift apart. Every rule says why it is there;
nothing is `*`. Server-side apply needs `patch`, and `create` as well when the object does not exist yet. What the
operator watches it reads from its informer cache, so `get` appears only where a rule says what is read one by one.
*/}}
{{- define "buildkite-operator.queueRules" -}}
# BuildkiteQueues: watched (informer cache); the operator never changes a queue's spec. `patch`: a finalizer keeps
# the queue's NetworkPolicy until its job pods are gone.
- apiGroups: [buildkite.com]
  resources: [buildkitequeues]
  verbs: [list, watch, patch]
# A queue's status: conditions, concurrency and active/waiting counts (JSON merge patch).
- apiGroups: [buildkite.com]
  resources: [buildkitequeues/status]
  verbs: [patch]
# BuildkiteJobs: watched, and read live before an irreversible decision (creating its pod, declaring the pod
# deleted); created for each job reserved from Buildkite; annotated with the state Buildkite reports; deleted once
# their jobTTLSecondsAfterFinished has passed.
- apiGroups: [buildkite.com]
  resources: [buildkitejobs]
  verbs: [get, list, watch, create, patch, delete]
# A job's status: phase, pod, node, exit code, reason (JSON merge patch).
- apiGroups: [buildkite.com]
  resources: [buildkitejobs/status]
  verbs: [patch]
# Job pods: watched (label-selected), created one per job, read back after an AlreadyExists or when the cache
# lacks a pod the job recorded, deleted once the job has ended. Never updated: a job pod is immutable for its life.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# The last lines of a job pod's failed container (an init container, or the agent), read once before the pod is
# deleted, so the job's status, its Event and Buildkite's finish detail say why in the container's own words.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# The queue's agent token Secret is read (never logged) to register with Buildkite and to check that it exists;
# per-job token Secrets are created for a job's pod, and replaced (`update`) when the job's token is issued again.
# No delete: a job's token Secret is owned by its BuildkiteJob and goes with it (garbage collector). No list/watch:
# the operator does not cache Secrets, so it never holds every Secret of the cluster in memory.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
# Each queue's ServiceAccount (its IRSA role annotation): watched (label-selected) and server-side applied.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch]
# The credentials preflight asks for a token of the queue's ServiceAccount (TokenRequest) to try AssumeRole
# with web identity before any job depends on it.
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
# Cache volumes, one claim per cache scope (pipeline or branch) and slot: watched, created right before the first pod
# that mounts one (read back when another job made it a moment before), deleted once no slot or scope can use it.
# Never changed after creation, so no patch.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, delete]
# Each queue's NetworkPolicy (no route to cloud metadata, no ingress): watched and server-side applied.
# Removed by the garbage collector with its queue (ownerReference), so no delete.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch]
# Events on queues and jobs (created, then patched to count repeats), for `kubectl describe`.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* The one cluster-scoped read of namespaced mode; not needed when clusterId is set. */}}
{{- define "buildkite-operator.clusterIdRule" -}}
# The uid of kube-system is the default cluster id in Buildkite stack keys; no other namespace is readable.
- apiGroups: [""]
  resources: [namespaces]
  resourceNames: [kube-system]
  verbs: [get]
{{- end }}

{{/* Whether a ClusterRole is rendered: in cluster-wide mode, or to read kube-system's uid when clusterId is empty. */}}
{{- define "buildkite-operator.clusterRoleNeeded" -}}
{{- if and .Values.rbac.create (or .Values.clusterWide (not .Values.clusterId)) }}true{{ end }}
{{- end }}
