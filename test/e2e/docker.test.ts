import { expect } from "chai";
import { execFile } from "node:child_process";
import { mkdtemp, copyFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { GenericContainer, Wait, type StartedTestContainer } from "testcontainers";
import { repoRoot } from "../support/binaries.js";
import { httpGet } from "../support/https-probe.js";

const run = promisify(execFile);

describe("the local Docker engine (for end-to-end tests)", function () {
  this.timeout(180_000);
  let context: string;
  let container: StartedTestContainer | undefined;

  before(async () => {
    context = await mkdtemp(join(tmpdir(), "bk-operator-image-"));
    const source = join(repoRoot, "test", "e2e", "fixtures", "hello");
    await run("go", ["build", "-trimpath", "-o", join(context, "hello"), "."], {
      cwd: source,
      env: { ...process.env, CGO_ENABLED: "0", GOTOOLCHAIN: "local" },
    });
    await copyFile(join(source, "Dockerfile"), join(context, "Dockerfile"));
  });
  after(async () => {
    await container?.stop();
    await rm(context, { recursive: true, force: true });
  });

  it("builds an image FROM scratch without a registry and runs it through testcontainers", async () => {
    const image = await GenericContainer.fromDockerfile(context).build("bk-operator-test/hello:latest", {
      deleteOnExit: false,
    });
    container = await image
      .withExposedPorts(8080)
      .withWaitStrategy(Wait.forHttp("/", 8080).withStartupTimeout(30_000))
      .start();
    const url = `http://${container.getHost()}:${container.getMappedPort(8080)}/`;
    const response = await httpGet(url);
    expect(response).to.deep.equal({ status: 200, body: "hello from scratch\n" });
  });
});
