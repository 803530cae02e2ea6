import {
  type V1OwnerReference,
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubernetesObject,
  type KubernetesObjectApi,
} from "@kubernetes/client-node";
import { BUILDKITE_JOB } from "../api/generated/buildkite-job.js";
import { BUILDKITE_QUEUE } from "../api/generated/buildkite-queue.js";
import { FIELD_MANAGER } from "./field-manager.js";

/** The API clients the controllers write with; created once in main.ts (or a test) and passed down. */
export interface KubeClients {
  core: CoreV1Api;
  custom: CustomObjectsApi;
  objects: KubernetesObjectApi;
}

type Crd = typeof BUILDKITE_JOB | typeof BUILDKITE_QUEUE;

/** Server-side applies `object` as the operator's field manager, taking over conflicting fields it owns by design. */
export async function apply<T extends KubernetesObject>(clients: KubeClients, object: T): Promise<T> {
  return clients.objects.patch(object, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
}

/**
 * Adds or removes one finalizer with a JSON merge patch of the whole list, guarded by the object's resourceVersion:
 * a list changed meanwhile by someone else is a 409 Conflict (retried), never overwritten.
 */
export async function setFinalizer(
  clients: KubeClients,
  object: KubernetesObject,
  finalizer: string,
  present: boolean,
): Promise<void> {
  const current = object.metadata?.finalizers ?? [];
  if (current.includes(finalizer) === present) return;
  const finalizers = present ? [...current, finalizer] : current.filter((f) => f !== finalizer);
  const { name = "", namespace = "", resourceVersion = "" } = object.metadata ?? {};
  await clients.objects.patch(
    {
      apiVersion: object.apiVersion ?? "",
      kind: object.kind ?? "",
      metadata: { name, namespace, resourceVersion, finalizers },
    },
    undefined,
    undefined,
    FIELD_MANAGER,
    undefined,
    PatchStrategy.MergePatch,
  );
}

/** Replaces the status of a custom resource with a JSON merge patch on the status subresource. */
export async function patchStatus(
  clients: KubeClients,
  crd: Crd,
  namespace: string,
  name: string,
  status: object,
): Promise<void> {
  await clients.custom.patchNamespacedCustomObjectStatus(
    {
      group: crd.group,
      version: crd.version,
      plural: crd.plural,
      namespace,
      name,
      body: { status },
      fieldManager: FIELD_MANAGER,
    },
    setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
  );
}

/** Sets annotations on a custom resource with a JSON merge patch (others are kept; a null value removes one). */
export async function annotate(
  clients: KubeClients,
  crd: Crd,
  namespace: string,
  name: string,
  annotations: Record<string, string | null>,
): Promise<void> {
  await clients.custom.patchNamespacedCustomObject(
    {
      group: crd.group,
      version: crd.version,
      plural: crd.plural,
      namespace,
      name,
      body: { metadata: { annotations } },
      fieldManager: FIELD_MANAGER,
    },
    setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
  );
}

/** Deletes a custom resource; a 404 means it is already gone, which is what was wanted. */
export async function deleteCustomObject(
  clients: KubeClients,
  crd: Crd,
  namespace: string,
  name: string,
): Promise<void> {
  await clients.custom.deleteNamespacedCustomObject({
    group: crd.group,
    version: crd.version,
    plural: crd.plural,
    namespace,
    name,
  });
}

/** `namespace/name` work-queue key of an object. */
export const keyOf = (o: KubernetesObject): string => `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`;

/** Splits a `namespace/name` key. */
export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf("/");
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/**
 * The ownerReference that makes `owner` the controller of an object it creates: the object goes with it (garbage
 * collection). `blockOwnerDeletion` makes a foreground deletion of the owner wait for the object.
 */
export function controllerRef(
  owner: { apiVersion?: string; kind?: string; metadata: { name?: string; uid?: string } },
  blockOwnerDeletion: boolean,
): V1OwnerReference {
  return {
    apiVersion: owner.apiVersion ?? "",
    kind: owner.kind ?? "",
    name: owner.metadata.name ?? "",
    uid: owner.metadata.uid ?? "",
    controller: true,
    blockOwnerDeletion,
  };
}
