import { randomUUID } from "node:crypto";
import { compact, HttpError, isRecord, optionalInt, optionalString, stringArray, stringMap } from "./http.js";
import { JOB_STATES, LOCKED_STATES, type JobState } from "./model.js";
import type { JobRecord } from "./records.js";

/**
 * What a test may say about a job it seeds (`POST /_fake/jobs` body, or `FakeBuildkite.seedJob`). Everything is
 * optional; the fake fills in a realistic payload. Field names are Buildkite's wire spelling.
 */
export interface SeedJobOptions {
  /** Choose the job's uuid (default: random). */
  readonly id?: string;
  /** The cluster queue (default: the default queue). */
  readonly queue_key?: string;
  /** The step's command, run by a real agent's bootstrap (default `echo "hello from the fake"`). */
  readonly command?: string;
  /** Extra or overriding job environment, merged over the standard variables. */
  readonly env?: Readonly<Record<string, string>>;
  /** Agent query rules (default `["queue=<queue_key>"]`). */
  readonly agent_query_rules?: readonly string[];
  readonly priority?: number;
  /** `scheduled` (default) or a locked state (`waiting`, `blocked`, `limited`, …) for 423 tests. */
  readonly state?: JobState;
  /** `Retry-After` seconds for 423 answers while the job is locked (default 2). */
  readonly retry_after_seconds?: number;
  /** When the job was scheduled, RFC 3339 (default: now); listing is oldest first. */
  readonly scheduled_at?: string;
  readonly pipeline_slug?: string;
  readonly build_number?: number;
  readonly branch?: string;
  readonly step_key?: string;
  /**
   * `BUILDKITE_REPO`. Default: a URL that does not exist, and the job env then also has `BUILDKITE_SKIP_CHECKOUT=true`
   * (as a step's `checkout: {skip: true}` sets it), so an agent running the job skips the checkout phase. A real URL
   * (a local `file://` repository, an http server of the test's) is checked out for real.
   */
  readonly repo?: string;
  /** The step's `image:`, as `BUILDKITE_IMAGE` in the job env (the image agent-stack-k8s runs the command in). */
  readonly image?: string;
  /**
   * The step's plugins as the pipeline upload expands them, serialized into `BUILDKITE_PLUGINS` (default `[]`):
   * one object per plugin, keyed by its full location. {@link expandPlugins} turns the pipeline's shorthand
   * (`{kubernetes: {...}}`, `docker#v5.12.0`) into this form.
   */
  readonly plugins?: readonly PluginEntry[];
}

/** One plugin of `BUILDKITE_PLUGINS`: `{"<location>[#<ref>]": <config or null>}`. */
export type PluginEntry = Readonly<Record<string, unknown>>;

/** Context the store supplies for a new job. */
export interface SeedContext {
  readonly seq: number;
  readonly now: number;
  readonly queueKey: string;
  readonly organizationSlug: string;
}

const DEFAULT_COMMAND = 'echo "hello from the fake"';
/** The repository of seeded jobs that name none: it does not exist, so their checkout is skipped. */
export const FAKE_REPO = "https://git.fake-buildkite.invalid/fake-org/fake-pipeline.git";

/** Builds a new job record with the standard environment the bootstrap requires (§2.6, §6.6). */
export function seedJobRecord(options: SeedJobOptions, ctx: SeedContext): JobRecord {
  const state = options.state ?? "scheduled";
  if (state !== "scheduled" && !LOCKED_STATES.has(state)) {
    throw new HttpError(422, `a job can be seeded as scheduled or a locked state (waiting, blocked, …), not ${state}`);
  }
  const scheduledAt = options.scheduled_at === undefined ? ctx.now : Date.parse(options.scheduled_at);
  if (Number.isNaN(scheduledAt)) throw new HttpError(422, "scheduled_at must be an RFC 3339 time");
  const uuid = options.id ?? randomUUID();
  const command = options.command ?? DEFAULT_COMMAND;
  const pipeline = { slug: options.pipeline_slug ?? "fake-pipeline", uuid: randomUUID() };
  const build = { uuid: randomUUID(), number: options.build_number ?? ctx.seq, branch: options.branch ?? "main" };
  const stepKey = options.step_key ?? null;
  const buildUrl = `https://buildkite.com/${ctx.organizationSlug}/${pipeline.slug}/builds/${build.number}`;
  const env: Record<string, string> = {
    CI: "true",
    BUILDKITE: "true",
    BUILDKITE_JOB_ID: uuid,
    BUILDKITE_BUILD_ID: build.uuid,
    BUILDKITE_BUILD_NUMBER: String(build.number),
    BUILDKITE_BUILD_URL: buildUrl,
    BUILDKITE_REPO: options.repo ?? FAKE_REPO,
    BUILDKITE_COMMIT: "HEAD",
    BUILDKITE_BRANCH: build.branch,
    BUILDKITE_MESSAGE: "Seeded by the fake Buildkite",
    BUILDKITE_SOURCE: "api",
    BUILDKITE_PULL_REQUEST: "false",
    BUILDKITE_PIPELINE_SLUG: pipeline.slug,
    BUILDKITE_PIPELINE_ID: pipeline.uuid,
    BUILDKITE_PIPELINE_PROVIDER: "git",
    BUILDKITE_ORGANIZATION_SLUG: ctx.organizationSlug,
    BUILDKITE_COMMAND: command,
    BUILDKITE_PLUGINS: JSON.stringify(options.plugins ?? []),
    BUILDKITE_LABEL: stepKey ?? "fake step",
    BUILDKITE_STEP_KEY: stepKey ?? "",
    BUILDKITE_RETRY_COUNT: "0",
    BUILDKITE_COMPUTE_TYPE: "self-hosted",
    ...(options.image === undefined ? {} : { BUILDKITE_IMAGE: options.image }),
    ...options.env,
  };
  if (env.BUILDKITE_REPO === FAKE_REPO && !("BUILDKITE_SKIP_CHECKOUT" in env)) env.BUILDKITE_SKIP_CHECKOUT = "true";
  return {
    uuid,
    seq: ctx.seq,
    queue_key: ctx.queueKey,
    agent_query_rules: options.agent_query_rules ?? [`queue=${ctx.queueKey}`],
    priority: options.priority ?? 0,
    created_at: Math.min(ctx.now, scheduledAt),
    scheduled_at: scheduledAt,
    runnable_at: scheduledAt,
    pipeline,
    build,
    step: { key: stepKey },
    command,
    env,
    state,
    retry_after_seconds: options.retry_after_seconds ?? 2,
    reservation: undefined,
    job_token: undefined,
    agent_uuid: undefined,
    started_at: undefined,
    finished_at: undefined,
    exit_status: undefined,
    signal: undefined,
    signal_reason: undefined,
    chunks_failed_count: undefined,
    finish_detail: undefined,
    chunks: new Map(),
    notifications: [],
    history: [{ from: null, to: state, event: "seed", at: ctx.now }],
  };
}

/** Reads a seed body from the control API into {@link SeedJobOptions}, rejecting mistyped fields with 422. */
export function parseSeedBody(body: Record<string, unknown>): SeedJobOptions {
  const text = (key: string): string | undefined => optionalString(body, key);
  const int = (key: string): number | undefined => optionalInt(body, key);
  const state = text("state");
  if (state !== undefined && !isJobState(state)) throw new HttpError(422, `unknown job state ${state}`);
  const rules = body.agent_query_rules;
  const plugins = body.plugins === undefined || body.plugins === null ? undefined : pluginList(body.plugins);
  return compact<SeedJobOptions>({
    id: text("id"),
    queue_key: text("queue_key"),
    command: text("command"),
    env: stringMap(body, "env"),
    agent_query_rules: rules === undefined || rules === null ? undefined : stringArray(body, "agent_query_rules", 100),
    priority: int("priority"),
    state,
    retry_after_seconds: int("retry_after_seconds"),
    scheduled_at: text("scheduled_at"),
    pipeline_slug: text("pipeline_slug"),
    build_number: int("build_number"),
    branch: text("branch"),
    step_key: text("step_key"),
    repo: text("repo"),
    image: text("image"),
    plugins,
  });
}

/** `BUILDKITE_PLUGINS`' form: an array of objects of one key each. */
function pluginList(value: unknown): PluginEntry[] {
  if (!Array.isArray(value) || !value.every((p) => isRecord(p) && Object.keys(p).length === 1))
    throw new HttpError(422, 'plugins must be an array of objects of one key each, e.g. [{"docker#v5.12.0": {...}}]');
  return value as PluginEntry[];
}

const JOB_STATE_SET: ReadonlySet<string> = new Set(JOB_STATES);

function isJobState(value: string): value is JobState {
  return JOB_STATE_SET.has(value);
}
