import { expect } from "chai";
import { PassThrough } from "node:stream";
import { createLogger } from "./logger.js";

/** Logs through a real logger into memory and returns the parsed lines. */
async function logLines(write: (logger: ReturnType<typeof createLogger>) => void): Promise<Record<string, unknown>[]> {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on("data", (c: Buffer) => chunks.push(c));
  const logger = createLogger("info", stream, () => new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)));
  write(logger);
  await new Promise((resolve) => setImmediate(resolve));
  return Buffer.concat(chunks)
    .toString("utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe("createLogger", () => {
  it("writes one JSON line per entry with a single time field, the level, the message and the context keys", async () => {
    const [line, ...rest] = await logLines((logger) => {
      logger.info("Created pod", { queue: "ci/linux", job: "bkj-1", pod: "bkj-1", namespace: "ci" });
    });
    expect(rest).to.deep.equal([]);
    expect(line).to.deep.equal({
      time: "2026-01-02T03:04:05.006Z",
      level: "info",
      message: "Created pod",
      queue: "ci/linux",
      job: "bkj-1",
      pod: "bkj-1",
      namespace: "ci",
    });
  });

  it("leaves out entries below its level", async () => {
    const lines = await logLines((logger) => {
      logger.debug("Listed pods");
      logger.warn("Informer failed; scheduled a restart", { informer: "pods" });
    });
    expect(lines.map((l) => l.message)).to.deep.equal(["Informer failed; scheduled a restart"]);
  });
});
