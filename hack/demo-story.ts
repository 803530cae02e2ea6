/**
 * What `npm run demo` shows: the queues (the examples of `examples/`, with the few changes each states), the AWS
 * roles the fake STS knows, and the jobs Buildkite schedules, each with the duration and exit code the stand-in agent
 * plays for it (KWOK nodes run no containers).
 */

export const NAMESPACE = "ci";
/** The deadline the demo gives linux-small, so one job can run past it within the demo. */
export const DEADLINE_SECONDS = 10;
export const STEP_IMAGE = "public.ecr.aws/docker/library/node:22-bookworm";
export const SERVICE_IMAGE = "public.ecr.aws/docker/library/postgres:16";
const KUBERNETES_PLUGIN = "github.com/buildkite-plugins/kubernetes-buildkite-plugin";

const ACCOUNT = "arn:aws:iam::123456789012";
const DEPLOY_ROLE = `${ACCOUNT}:role/ci-deploy`;
const RELEASE_ROLE = `${ACCOUNT}:role/ci-release`;

/** A queue of the demo: an example file, and what the demo changes in it (said on screen). */
export interface DemoQueue {
  name: string;
  example: string;
  /** What the demo changes beyond the fakes' endpoints, in words. */
  changes?: string;
  patch?: (spec: Record<string, unknown>) => void;
}

export const QUEUES: DemoQueue[] = [
  {
    name: "linux-small",
    example: "queue-linux-amd64.yaml",
    changes: `maxJobDurationSeconds ${DEADLINE_SECONDS}, so one job runs past it`,
    patch: (spec) => {
      spec.maxJobDurationSeconds = DEADLINE_SECONDS;
    },
  },
  { name: "linux-medium-arm", example: "queue-linux-arm64-aws.yaml" },
  {
    name: "release-arm",
    example: "queue-linux-arm64-aws.yaml",
    changes: "named release-arm, with the role ci-release",
    patch: (spec) => {
      spec.queue = "release-arm";
      (spec.aws as Record<string, unknown>).roleArn = RELEASE_ROLE;
    },
  },
  {
    name: "linux-xlarge",
    example: "queue-linux-amd64.yaml",
    changes: "named linux-xlarge, shape LINUX_AMD64_32X128: no node of the demo is that large",
    patch: (spec) => {
      spec.queue = "linux-xlarge";
      spec.instanceShape = "LINUX_AMD64_32X128";
      spec.maxVCPU = 64;
    },
  },
];

/**
 * The roles of the fake STS and whom their trust policies admit. ci-release's trust policy was copied from
 * ci-deploy's and never changed: it admits linux-medium-arm's ServiceAccount, not release-arm's.
 */
export const ROLES = [
  { arn: DEPLOY_ROLE, allowedSubjects: [`system:serviceaccount:${NAMESPACE}:bkq-linux-medium-arm`] },
  { arn: RELEASE_ROLE, allowedSubjects: [`system:serviceaccount:${NAMESPACE}:bkq-linux-medium-arm`] },
];

/** What each job is there to show; the demo's director acts on these. */
export type Role = "plain" | "step-image" | "deadline" | "canceled" | "wrong-role";

export interface DemoJob {
  label: string;
  queue: string;
  role: Role;
  priority?: number;
  /** How long the stand-in agent plays the job, and the exit code it reports. */
  durationMs: number;
  exitCode: number;
  env?: Record<string, string>;
}

/** Scheduled at the start. A mix a person recognises: passes, a failure, priorities, a step with its own image. */
export const JOBS: DemoJob[] = [
  { label: "build", queue: "linux-small", role: "plain", durationMs: 2_000, exitCode: 0 },
  { label: "unit tests", queue: "linux-small", role: "plain", durationMs: 3_000, exitCode: 0 },
  { label: "lint (fails)", queue: "linux-small", role: "plain", durationMs: 1_000, exitCode: 1 },
  { label: "docs", queue: "linux-small", role: "plain", durationMs: 1_000, exitCode: 0 },
  { label: "hotfix (priority 10)", queue: "linux-small", role: "plain", priority: 10, durationMs: 1_000, exitCode: 0 },
  {
    label: "tests + postgres",
    queue: "linux-small",
    role: "step-image",
    durationMs: 3_000,
    exitCode: 0,
    // What Buildkite sends for a step with `image:` and the kubernetes plugin's `sidecars` (see examples/).
    env: {
      BUILDKITE_IMAGE: STEP_IMAGE,
      BUILDKITE_PLUGINS: JSON.stringify([
        {
          [KUBERNETES_PLUGIN]: {
            sidecars: [{ name: "postgres", image: SERVICE_IMAGE, env: [{ name: "POSTGRES_PASSWORD", value: "test" }] }],
          },
        },
      ]),
    },
  },
  { label: "soak test (too long)", queue: "linux-small", role: "deadline", durationMs: 600_000, exitCode: 0 },
  { label: "arm64 build", queue: "linux-medium-arm", role: "plain", durationMs: 3_000, exitCode: 0 },
  { label: "arm64 tests", queue: "linux-medium-arm", role: "plain", durationMs: 2_000, exitCode: 0 },
  {
    label: "deploy (priority 5)",
    queue: "linux-medium-arm",
    role: "plain",
    priority: 5,
    durationMs: 2_000,
    exitCode: 0,
  },
  { label: "benchmarks (canceled)", queue: "linux-xlarge", role: "canceled", durationMs: 60_000, exitCode: 0 },
];

/**
 * Scheduled once release-arm shows its broken role, as a person would push a release then. The step would fail at
 * its first AWS call; the stand-in agent reports that as exit 1.
 */
export const RELEASE_JOB: DemoJob = {
  label: "release (wrong role)",
  queue: "release-arm",
  role: "wrong-role",
  durationMs: 1_500,
  exitCode: 1,
};
