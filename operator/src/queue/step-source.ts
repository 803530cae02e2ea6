import type { BuildkiteJobSpecStep } from "../api/generated/buildkite-job.js";
import type { JobDetails } from "../buildkite/types.js";
import { KUBERNETES_PLUGIN } from "../job/step-request.js";

/** The largest plugin settings a BuildkiteJob records; a bigger request is refused rather than cut. */
const MAX_PLUGIN_BYTES = 32 * 1024;
/** The longest step command a BuildkiteJob records (the CRD's limit). */
const MAX_COMMAND_BYTES = 65536;

/**
 * What a job's step asks of its pod, from Buildkite's get-job: its `image:` (BUILDKITE_IMAGE) and its `kubernetes`
 * plugin (in BUILDKITE_PLUGINS, a JSON string). Recorded on the BuildkiteJob as it is; the queue decides later what
 * is allowed. What cannot be read is recorded as an error, which fails the job with that message. Pure.
 */
export function stepOf(details: JobDetails): BuildkiteJobSpecStep {
  const image = details.env.BUILDKITE_IMAGE?.trim();
  const step: BuildkiteJobSpecStep = {
    ...(details.command !== "" ? { command: details.command } : {}),
    ...(image ? { image } : {}),
  };
  if (details.command.length > MAX_COMMAND_BYTES)
    return {
      ...(image ? { image } : {}),
      error: `The step's command is longer than ${MAX_COMMAND_BYTES} characters.`,
    };
  const raw = details.env.BUILDKITE_PLUGINS ?? "";
  if (raw.trim() === "") return step;
  let plugins: unknown;
  try {
    plugins = JSON.parse(raw);
  } catch (err) {
    return { ...step, error: `BUILDKITE_PLUGINS is not JSON (${(err as Error).message}).` };
  }
  if (!Array.isArray(plugins)) return { ...step, error: "BUILDKITE_PLUGINS is not a JSON list of plugins." };
  const settings: unknown[] = [];
  for (const entry of plugins as unknown[]) {
    if (typeof entry !== "object" || entry === null) continue;
    for (const [source, config] of Object.entries(entry)) if (isKubernetesPlugin(source)) settings.push(config);
  }
  if (settings.length === 0) return step;
  if (settings.length > 1) return { ...step, error: "The step uses the kubernetes plugin more than once." };
  const config: unknown = settings[0];
  if (typeof config !== "object" || config === null || Array.isArray(config))
    return { ...step, error: "The kubernetes plugin's settings must be a map (sidecars, env, envFrom, ...)." };
  if (JSON.stringify(config).length > MAX_PLUGIN_BYTES)
    return { ...step, error: `The kubernetes plugin's settings are larger than ${MAX_PLUGIN_BYTES} bytes.` };
  return { ...step, kubernetes: config as Record<string, unknown> };
}

/** `kubernetes` (the shorthand) or Buildkite's expansion of it, with or without a `#version`. */
function isKubernetesPlugin(source: string): boolean {
  const name = source.split("#")[0] ?? "";
  return name === "kubernetes" || name === KUBERNETES_PLUGIN || name.endsWith("/kubernetes-buildkite-plugin");
}
