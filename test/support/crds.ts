import {
  ApiextensionsV1Api,
  KubernetesObjectApi,
  loadYaml,
  PatchStrategy,
  type KubeConfig,
  type V1CustomResourceDefinition,
} from "@kubernetes/client-node";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "./binaries.js";
import { eventually } from "./eventually.js";

/** Applies every CRD of `crds/` (server-side apply) and waits until the API server serves them. */
export async function installCrds(kc: KubeConfig): Promise<void> {
  const objects = KubernetesObjectApi.makeApiClient(kc);
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const dir = join(repoRoot, "crds");
  // loadYaml maps JSON names to the client's model names (`x-kubernetes-validations` → `xKubernetesValidations`,
  // `enum` → `_enum`); a plain YAML parse would have the serializer silently drop those fields.
  const crds = readdirSync(dir)
    .filter((f) => f.endsWith(".yaml"))
    .map((f) => loadYaml<V1CustomResourceDefinition>(readFileSync(join(dir, f), "utf8")));
  for (const crd of crds)
    await objects.patch(crd, undefined, undefined, "test-harness", true, PatchStrategy.ServerSideApply);
  await Promise.all(
    crds.map((crd) =>
      eventually(
        async () => {
          const live = await ext.readCustomResourceDefinition({ name: crd.metadata?.name ?? "" });
          if (live.status?.conditions?.find((c) => c.type === "Established")?.status !== "True")
            throw new Error("not established");
        },
        { timeoutMs: 30_000, what: `CRD ${crd.metadata?.name ?? ""} to be established` },
      ),
    ),
  );
}
