import type { V1Pod, V1Volume } from "@kubernetes/client-node";
import { expect } from "chai";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { memoryKeys } from "./memory-keys.js";
import { mountVolumes, VolumeError, type VolumeContext } from "./pod-volumes.js";

describe("pod volumes", () => {
  let dir: string;
  let ctx: VolumeContext;
  const pod = (volumes: V1Volume[]): V1Pod => ({
    metadata: { name: "p", namespace: "ci", uid: "u" },
    spec: { containers: [], volumes },
  });
  const mode = async (file: string): Promise<number> => (await stat(file)).mode & 0o777;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "bkvol-"));
    const keys = memoryKeys(
      { ssh: { id_ed25519: "key", known_hosts: "hosts" } },
      { hooks: { environment: "#!/bin/sh\n", "pre-exit": "#!/bin/sh\n" } },
    );
    ctx = {
      keys,
      token: (p, projection) => Promise.resolve(`token-for-${p.metadata?.name ?? ""}-${projection.audience ?? ""}`),
      podDir: join(dir, "pod"),
      workDir: dir,
    };
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("writes a Secret's and a ConfigMap's keys as files with the volume's defaultMode", async () => {
    const dirs = await mountVolumes(
      ctx,
      pod([
        { name: "git-ssh", secret: { secretName: "ssh", defaultMode: 0o400 } },
        { name: "hooks", configMap: { name: "hooks", defaultMode: 0o555 } },
        { name: "workspace", emptyDir: {} },
        { name: "cache", persistentVolumeClaim: { claimName: "c1" } },
      ]),
    );
    expect(dirs.get("git-ssh")).to.equal(join(dir, "pod/v/git-ssh"));
    expect(dirs.get("cache")).to.equal(join(dir, "pvc/c1"));
    expect(await readFile(join(dir, "pod/v/git-ssh/id_ed25519"), "utf8")).to.equal("key");
    expect(await mode(join(dir, "pod/v/git-ssh/known_hosts"))).to.equal(0o400);
    expect(await mode(join(dir, "pod/v/hooks/environment"))).to.equal(0o555);
    expect(await mode(join(dir, "pod/v/hooks/pre-exit"))).to.equal(0o555);
  });

  it("honours items: only the listed keys, at their path, with their mode; projected sources too", async () => {
    await mountVolumes(
      ctx,
      pod([
        {
          name: "git-ssh",
          secret: { secretName: "ssh", items: [{ key: "id_ed25519", path: "keys/id", mode: 0o440 }] },
        },
        {
          name: "mixed",
          projected: {
            defaultMode: 0o444,
            sources: [
              { configMap: { name: "hooks", items: [{ key: "environment", path: "env" }] } },
              { serviceAccountToken: { path: "token", audience: "sts" } },
              { downwardAPI: { items: [{ path: "namespace", fieldRef: { fieldPath: "metadata.namespace" } }] } },
            ],
          },
        },
      ]),
    );
    expect(await readFile(join(dir, "pod/v/git-ssh/keys/id"), "utf8")).to.equal("key");
    expect(await mode(join(dir, "pod/v/git-ssh/keys/id"))).to.equal(0o440);
    let known: unknown;
    await stat(join(dir, "pod/v/git-ssh/known_hosts")).catch((err: unknown) => {
      known = err;
    });
    expect(known, "a key not in items is not written").to.have.property("code", "ENOENT");
    expect(await mode(join(dir, "pod/v/mixed/env"))).to.equal(0o444);
    expect(await readFile(join(dir, "pod/v/mixed/token"), "utf8")).to.equal("token-for-p-sts");
    expect(await readFile(join(dir, "pod/v/mixed/namespace"), "utf8")).to.equal("ci");
  });

  it("fails to mount a missing object or listed key unless optional", async () => {
    await mountVolumes(ctx, pod([{ name: "o", secret: { secretName: "gone", optional: true } }]));
    for (const volume of [
      { name: "s", secret: { secretName: "gone" } },
      { name: "c", configMap: { name: "hooks", items: [{ key: "nope", path: "x" }] } },
      { name: "h", hostPath: { path: "/etc" } },
    ]) {
      let error: unknown;
      await mountVolumes(ctx, pod([volume])).catch((err: unknown) => {
        error = err;
      });
      expect(error, volume.name).to.be.instanceOf(VolumeError);
      expect((error as Error).message).to.include(`volume "${volume.name}"`);
    }
  });
});
