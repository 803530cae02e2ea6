import type { PluginEntry } from "./seed.js";

/** The location Buildkite gives the `kubernetes` plugin, which agent-stack-k8s (and the agent's Kubernetes mode) look for. */
export const KUBERNETES_PLUGIN = "github.com/buildkite-plugins/kubernetes-buildkite-plugin";

/** A plugin as a pipeline names it: `{name: config}`, or a bare name for a plugin without config. */
export type PipelinePlugin = string | Readonly<Record<string, unknown>>;

/**
 * Expands a step's `plugins:` as the pipeline upload does for `BUILDKITE_PLUGINS`: each plugin becomes an object of
 * one key, its full location. A bare name is one of Buildkite's own (`kubernetes` →
 * `github.com/buildkite-plugins/kubernetes-buildkite-plugin`, `docker#v5.12.0` →
 * `github.com/buildkite-plugins/docker-buildkite-plugin#v5.12.0`), `org/name` is on GitHub
 * (`github.com/org/name-buildkite-plugin`), and a URL, a host path or a local path is kept as written.
 */
export function expandPlugins(plugins: readonly PipelinePlugin[]): PluginEntry[] {
  return plugins.flatMap((plugin) =>
    typeof plugin === "string"
      ? [{ [pluginLocation(plugin)]: null }]
      : Object.entries(plugin).map(([name, config]) => ({ [pluginLocation(name)]: config ?? null })),
  );
}

/** The full location of a plugin named as in a pipeline, its `#ref` kept. */
export function pluginLocation(name: string): string {
  const hash = name.indexOf("#");
  const [path, ref] = hash < 0 ? [name, ""] : [name.slice(0, hash), name.slice(hash)];
  // A URL (https://, ssh://, file://), scp-like git@host:…, a path, or a host (a dot in its first segment).
  if (/^[a-z][a-z0-9+.-]*:|^[./~]|@/.test(path) || path.split("/")[0]?.includes(".") === true) return name;
  const parts = path.split("/");
  const [org, repo] = parts.length === 1 ? ["buildkite-plugins", path] : [parts[0] ?? "", parts.slice(1).join("/")];
  const full = repo.endsWith("-buildkite-plugin") ? repo : `${repo}-buildkite-plugin`;
  return `github.com/${org}/${full}${ref}`;
}
