import {
  ApiextensionsV1Api,
  CustomObjectsApi,
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

/**
 * Applies every CRD of `crds/` (server-side apply) and waits until the API server serves them as an informer reads
 * them: `Established`, and a full list answered. Right after `Established` the resource's watch cache is still
 * filling, and the API server answers lists that the cache serves (an informer's unpaginated list) with 429 "storage is
 * (re)initializing" for about a second; an operator started then logs a failed informer and restarts it.
 */
export async function installCrds(kc: KubeConfig): Promise<void> {
  const objects = KubernetesObjectApi.makeApiClient(kc);
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
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
          const version = live.spec.versions.find((v) => v.storage)?.name ?? "";
          // unpaginated, as an informer lists: a paginated list is answered from etcd while the cache fills
          await custom.listClusterCustomObject({ group: live.spec.group, version, plural: live.spec.names.plural });
        },
        { timeoutMs: 30_000, what: `CRD ${crd.metadata?.name ?? ""} to be established and listed` },
      ),
    ),
  );
}
