import type {
  CoreV1Api,
  V1DownwardAPIVolumeFile,
  V1KeyToPath,
  V1Pod,
  V1ServiceAccountTokenProjection,
  V1Volume,
} from "@kubernetes/client-node";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { dirname, join, normalize } from "node:path";
import { fieldValue, type KeySource } from "./kubelet-env.js";

/**
 * A pod's volumes as local directories, made before any of its containers starts (as the kubelet mounts them):
 * emptyDir one per pod, a PVC one per claim (kept across pods), Secret and ConfigMap volumes with their keys written
 * as files, downward API files, and projected volumes of ServiceAccount tokens, Secrets, ConfigMaps and downward API
 * files (the default `kube-api-access-*` volume among them). The files are written once (the kubelet's atomic
 * `..data` symlink swaps and later refreshes are not modelled); `readOnly` is not enforced.
 */

/** Where the volumes go and how Secrets, ConfigMaps and ServiceAccount tokens are read. */
export interface VolumeContext {
  readonly keys: KeySource;
  /** A ServiceAccount token for the pod, as the kubelet requests one for a projection ({@link apiTokenSource}). */
  readonly token: (pod: V1Pod, projection: V1ServiceAccountTokenProjection) => Promise<string>;
  /** The pod's own directory: emptyDirs and Secret/ConfigMap volumes go under `<podDir>/v/<name>`. */
  readonly podDir: string;
  /** The runner's directory: claims go under `<workDir>/pvc/<claim>`. */
  readonly workDir: string;
}

/** A volume the kubelet could not mount (it would leave the pod in ContainerCreating, with a FailedMount event). */
export class VolumeError extends Error {
  override name = "VolumeError";
}

/** The default file mode of Secret, ConfigMap and projected volumes (0644). */
const DEFAULT_MODE = 0o644;

/** Makes every volume of the pod; returns their host directories by volume name. */
export async function mountVolumes(ctx: VolumeContext, pod: V1Pod): Promise<Map<string, string>> {
  const dirs = new Map<string, string>();
  for (const volume of pod.spec?.volumes ?? []) dirs.set(volume.name, await mountVolume(ctx, pod, volume));
  return dirs;
}

async function mountVolume(ctx: VolumeContext, pod: V1Pod, volume: V1Volume): Promise<string> {
  const claim = volume.persistentVolumeClaim?.claimName;
  const dir = claim === undefined ? join(ctx.podDir, "v", volume.name) : join(ctx.workDir, "pvc", claim);
  await mkdir(dir, { recursive: true });
  if (volume.emptyDir || claim !== undefined) return dir;
  const fail = (message: string): never => {
    throw new VolumeError(`MountVolume.SetUp failed for volume "${volume.name}": ${message}`);
  };
  const write = async (kind: "secret" | "configmap", name: string, options: KeyOptions): Promise<void> => {
    const keys = await (kind === "secret" ? ctx.keys.secret(name) : ctx.keys.configMap(name));
    await writeKeys(dir, keys, options, `${kind} "${name}"`, fail);
  };
  const { secret, configMap, projected } = volume;
  if (secret) {
    const { items, defaultMode, optional } = secret;
    await write("secret", secret.secretName ?? "", { items, defaultMode, optional });
    return dir;
  }
  if (configMap) {
    const { items, defaultMode, optional } = configMap;
    await write("configmap", configMap.name ?? "", { items, defaultMode, optional });
    return dir;
  }
  if (volume.downwardAPI) {
    await writeFields(dir, pod, volume.downwardAPI.items ?? [], volume.downwardAPI.defaultMode, fail);
    return dir;
  }
  if (!projected?.sources)
    return fail(
      "only emptyDir, PVC, Secret, ConfigMap, downward API and projected volumes are supported by the pod runner",
    );
  const defaultMode = projected.defaultMode;
  for (const source of projected.sources) {
    if (source.secret) {
      const { items, optional } = source.secret;
      await write("secret", source.secret.name ?? "", { items, defaultMode, optional });
    } else if (source.configMap) {
      const { items, optional } = source.configMap;
      await write("configmap", source.configMap.name ?? "", { items, defaultMode, optional });
    } else if (source.serviceAccountToken) {
      const token = source.serviceAccountToken;
      await writeFile(await fileIn(dir, token.path, fail), await ctx.token(pod, token), { mode: 0o600 });
    } else if (source.downwardAPI) {
      await writeFields(dir, pod, source.downwardAPI.items ?? [], defaultMode, fail);
    } else
      fail("only ServiceAccount token, Secret, ConfigMap and downward API projections are supported by the pod runner");
  }
  return dir;
}

/** As the kubelet does for a projected token: a TokenRequest for the pod's ServiceAccount, bound to the pod. */
export function apiTokenSource(core: CoreV1Api): VolumeContext["token"] {
  return async (pod, projection) => {
    const request = await core.createNamespacedServiceAccountToken({
      name: pod.spec?.serviceAccountName ?? "default",
      namespace: pod.metadata?.namespace ?? "",
      body: {
        spec: {
          audiences: projection.audience === undefined ? [] : [projection.audience],
          expirationSeconds: projection.expirationSeconds ?? 3600,
          boundObjectRef: {
            apiVersion: "v1",
            kind: "Pod",
            name: pod.metadata?.name ?? "",
            uid: pod.metadata?.uid ?? "",
          },
        },
      },
    });
    return request.status?.token ?? "";
  };
}

interface KeyOptions {
  readonly items: readonly V1KeyToPath[] | undefined;
  readonly defaultMode: number | undefined;
  readonly optional: boolean | undefined;
}

/**
 * Writes an object's keys as files: every key under its own name, or only the listed `items` at their `path`, each
 * with its item `mode` or the volume's `defaultMode`. A missing object (or listed key) fails unless optional.
 */
async function writeKeys(
  dir: string,
  keys: ReadonlyMap<string, Buffer> | undefined,
  options: KeyOptions,
  what: string,
  fail: (message: string) => never,
): Promise<void> {
  if (!keys) {
    if (options.optional === true) return;
    fail(`${what} not found`);
  }
  const files: readonly V1KeyToPath[] = options.items ?? [...keys.keys()].map((key) => ({ key, path: key }));
  for (const item of files) {
    const data = keys.get(item.key);
    if (data === undefined) {
      if (options.optional === true) continue;
      fail(`key ${item.key} of ${what} not found`);
    }
    const file = await fileIn(dir, item.path, fail);
    await writeFile(file, data);
    // Explicitly: writeFile's mode is filtered by the umask.
    await chmod(file, (item.mode ?? options.defaultMode ?? DEFAULT_MODE) & 0o7777);
  }
}

/** Writes downward API items (`fieldRef` only) as files, as a downwardAPI volume or projection does. */
async function writeFields(
  dir: string,
  pod: V1Pod,
  items: readonly V1DownwardAPIVolumeFile[],
  defaultMode: number | undefined,
  fail: (message: string) => never,
): Promise<void> {
  for (const item of items) {
    if (!item.fieldRef) fail(`downward API item ${item.path}: only fieldRef is supported by the pod runner`);
    let value: string;
    try {
      value = fieldValue(pod, item.fieldRef.fieldPath);
    } catch (err) {
      return fail((err as Error).message);
    }
    const file = await fileIn(dir, item.path, fail);
    await writeFile(file, value);
    await chmod(file, (item.mode ?? defaultMode ?? DEFAULT_MODE) & 0o7777);
  }
}

/** A file's path inside the volume (its directories made); a path that climbs out is refused, as by the API server. */
async function fileIn(dir: string, path: string, fail: (message: string) => never): Promise<string> {
  const file = normalize(join(dir, path));
  if (!file.startsWith(`${dir}/`)) fail(`path ${path} leaves the volume`);
  await mkdir(dirname(file), { recursive: true });
  return file;
}
