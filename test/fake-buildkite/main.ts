import { parseArgs } from "node:util";
import { DEFAULT_AGENT_TOKEN, FakeBuildkite } from "./server.js";

/**
 * `npm run fake-buildkite`: runs the fake Buildkite on its own, e.g. for the demo or to point a hand-started agent
 * or operator at it. Prints the URL, the agent endpoint and the agent token, then serves until SIGINT or SIGTERM.
 *
 * Flags: `--port N` (default 8080), `--host H` (default 127.0.0.1), `--token T` (default bkct_fake_default),
 * `--rate-limits` (enforce the Stacks API limits).
 */
async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: "8080" },
      host: { type: "string", default: "127.0.0.1" },
      token: { type: "string", default: DEFAULT_AGENT_TOKEN },
      "rate-limits": { type: "boolean", default: false },
    },
    strict: true,
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    throw new Error(`--port must be a port number, not ${values.port}`);
  const fake = await FakeBuildkite.start({
    port,
    host: values.host,
    agentToken: values.token,
    rateLimits: values["rate-limits"],
  });
  process.stdout.write(
    `Fake Buildkite listening on ${fake.url}\n` +
      `  agent endpoint: ${fake.agentEndpoint}\n` +
      `  agent token:    ${fake.agentToken}\n` +
      `  control API:    ${fake.url}/_fake (POST /_fake/jobs to seed a job)\n`,
  );
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await fake.stop();
}

main().catch((err: unknown) => {
  process.stderr.write(`fake-buildkite: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
