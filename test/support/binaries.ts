import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root, found from this file whether it runs from `test/` or compiled `dist/test/`. */
export const repoRoot = ((): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json")) || dir.endsWith("/dist")) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("could not find the repository root (no package.json above this file)");
    dir = parent;
  }
  return dir;
})();

/** Path of a binary built by `hack/build-binaries.sh`. */
export function hackBinary(name: string): string {
  return join(repoRoot, "hack", "bin", name);
}
