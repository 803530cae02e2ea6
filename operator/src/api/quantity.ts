/**
 * Kubernetes resource quantities, as far as job pods need them: CPU in millicores and memory in bytes, to check that
 * what a step asks for fits its shape and to split the shape between a pod's containers.
 */

const BINARY: Readonly<Record<string, number>> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50 };
const DECIMAL: Readonly<Record<string, number>> = { "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, m: 1e-3 };

/** The value of a quantity in its base unit (cores, bytes); undefined if it is not a quantity. */
export function parseQuantity(text: string | number): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) && text >= 0 ? text : undefined;
  const match = /^(\d+(?:\.\d+)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?$/.exec(text.trim());
  if (!match) return undefined;
  const unit = match[2] ?? "";
  const scale = BINARY[unit] ?? DECIMAL[unit];
  return scale === undefined ? undefined : Number(match[1]) * scale;
}

/** Millicores of a CPU quantity ("500m", "2", "1.5"); undefined if it is not one. */
export function cpuMillis(text: string | number): number | undefined {
  const cores = parseQuantity(text);
  return cores === undefined ? undefined : Math.round(cores * 1000);
}

/** Bytes of a memory quantity ("512Mi", "4Gi", "1G"); undefined if it is not one. */
export function memoryBytes(text: string | number): number | undefined {
  const bytes = parseQuantity(text);
  return bytes === undefined ? undefined : Math.round(bytes);
}

/** A CPU quantity from millicores: whole cores when exact ("2"), else millicores ("1750m"). */
export const formatCpu = (millis: number): string => (millis % 1000 === 0 ? String(millis / 1000) : `${millis}m`);

/** A memory quantity from bytes: in Gi or Mi when exact, else bytes. */
export const formatMemory = (bytes: number): string =>
  bytes % 2 ** 30 === 0 ? `${bytes / 2 ** 30}Gi` : bytes % 2 ** 20 === 0 ? `${bytes / 2 ** 20}Mi` : String(bytes);
