import { createReadStream } from "node:fs";
import type { HeapSummary } from "./profiles.js";

/**
 * Reads a V8 heap snapshot file as a stream: with 10,000 jobs in flight the file outgrows the longest string V8 can
 * hold, so it is never read whole. Only what the summary needs is kept: the node fields (type, name, self size) and
 * the string table; the edges and the rest are skipped.
 */
export async function readHeapSnapshot(file: string): Promise<HeapSummary> {
  const NODES = '"nodes":[';
  const STRINGS = '"strings":[';
  let phase: "head" | "nodes" | "skip" | "strings" = "head";
  let pending = "";
  let head = "";
  let digits = "";
  const nodes: number[] = [];
  const strings: string[] = [];
  let raw: string[] = [];
  let inString = false;
  let escaped = false;

  const nodesFrom = (text: string, from: number): number => {
    for (let i = from; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c >= 48 && c <= 57) digits += String.fromCharCode(c);
      else {
        if (digits !== "") nodes.push(Number(digits));
        digits = "";
        if (c === 93 /* ] */) return i + 1;
      }
    }
    return -1;
  };
  /** Reads strings from `text`; true once the table's closing bracket is reached. */
  const stringsFrom = (text: string, from: number): boolean => {
    let start = from;
    for (let i = from; i < text.length; i++) {
      const c = text[i];
      if (inString) {
        if (escaped) escaped = false;
        else if (c === "\\") escaped = true;
        else if (c === '"') {
          raw.push(text.slice(start, i));
          strings.push(JSON.parse(`"${raw.join("")}"`) as string);
          raw = [];
          inString = false;
        }
      } else if (c === '"') {
        inString = true;
        start = i + 1;
      } else if (c === "]") return true;
    }
    if (inString) raw.push(text.slice(start));
    return false;
  };

  for await (const chunk of createReadStream(file, { encoding: "utf8", highWaterMark: 1 << 20 })) {
    let text = pending + (chunk as string);
    pending = "";
    if (phase === "head") {
      const at = text.indexOf(NODES);
      if (at < 0) {
        head += text;
        continue;
      }
      head += text.slice(0, at);
      text = text.slice(at + NODES.length);
      phase = "nodes";
    }
    if (phase === "nodes") {
      const end = nodesFrom(text, 0);
      if (end < 0) continue;
      text = text.slice(end);
      phase = "skip";
    }
    if (phase === "skip") {
      const at = text.indexOf(STRINGS);
      if (at < 0) {
        // The marker may straddle two chunks.
        pending = text.slice(-STRINGS.length);
        continue;
      }
      text = text.slice(at + STRINGS.length);
      phase = "strings";
    }
    if (stringsFrom(text, 0)) break;
  }

  const meta = (JSON.parse(`${head.replace(/,\s*$/, "")}}`) as HeapHead).snapshot.meta;
  const width = meta.node_fields.length;
  const [typeAt, nameAt, sizeAt] = ["type", "name", "self_size"].map((f) => meta.node_fields.indexOf(f));
  const types = meta.node_types[0];
  const byKind = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < nodes.length; i += width) {
    const size = nodes[i + (sizeAt ?? 0)] ?? 0;
    const type = types[nodes[i + (typeAt ?? 0)] ?? 0] ?? "?";
    const kind = type === "object" ? (strings[nodes[i + (nameAt ?? 0)] ?? 0] ?? "?") : `(${type})`;
    byKind.set(kind, (byKind.get(kind) ?? 0) + size);
    total += size;
  }
  return { totalBytes: total, byKind };
}

interface HeapHead {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
}
