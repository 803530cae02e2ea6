#!/usr/bin/env bash
# Builds the operator's container image without any registry: stages the project's own Node binary with the
# shared libraries it links against, dist/operator and the production dependencies in .tmp/image/, then runs
# `docker build` with the repository as context (.dockerignore lets only .tmp/image/ through).
#
#   hack/build-image.sh [IMAGE]      default IMAGE: buildkite-operator:<package.json version>
#   BASE_IMAGE=...                   the final stage's base (default scratch)
#
# Needs `npm run build` first (it packages dist/, it does not compile). The image is for this machine's
# architecture, like the Node binary it carries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
node_bin="$root/node_modules/node/bin/node"
[ -x "$node_bin" ] || { echo "build-image: $node_bin is missing; run npm ci" >&2; exit 1; }
[ -f dist/operator/src/main.js ] || { echo "build-image: dist/operator/src/main.js is missing; run npm run build" >&2; exit 1; }
version=$("$node_bin" -p 'require("./package.json").version')
image=${1:-buildkite-operator:$version}
base=${BASE_IMAGE:-scratch}

stage="$root/.tmp/image"
rm -rf "$stage"
mkdir -p "$stage/runtime/usr/local/bin" "$stage/runtime/etc" "$stage/runtime/tmp" "$stage/app"

# Node. The npm build ships with its symbol table and debug info (17 MB); stripping keeps the dynamic symbols native
# addons link against, only C++ frame names in a crash dump go.
install -m 0755 "$node_bin" "$stage/runtime/usr/local/bin/node"
if command -v strip >/dev/null; then strip "$stage/runtime/usr/local/bin/node"; fi
# Every library ldd resolves for it (libc, libstdc++, libm, libgcc_s, …) at the same path, plus the loader named in
# its ELF header. Copied as regular files (-L): on merged-/usr systems /lib is a symlink.
while read -r lib; do
  mkdir -p "$stage/runtime$(dirname "$lib")"
  cp -L "$lib" "$stage/runtime$lib"
done < <(ldd "$node_bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$stage/runtime/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$stage/runtime/etc/group"
chmod 1777 "$stage/runtime/tmp"

# The operator: compiled JavaScript only (no tests, no source maps) and a package.json for ESM and the version.
mkdir -p "$stage/app/dist"
(cd dist && find operator -name '*.js' ! -name '*.test.js' -print0 | xargs -0 cp --parents -t "$stage/app/dist")
"$node_bin" -e '
  const p = require("./package.json");
  const out = { name: p.name, version: p.version, private: true, type: p.type, license: p.license };
  require("fs").writeFileSync(process.argv[1], JSON.stringify(out, null, 2) + "\n");
' "$stage/app/package.json"

# Production dependencies: the installed tree pruned offline to what package-lock.json says production needs,
# without type declarations, source maps, TypeScript sources and docs (Node loads none of them).
deps="$stage/deps"
mkdir -p "$deps"
cp package.json package-lock.json "$deps/"
cp -a node_modules "$deps/"
(cd "$deps" && npm prune --omit=dev --ignore-scripts --offline --no-audit --no-fund --loglevel=error)
find "$deps/node_modules" -type f \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' \
  -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.md' -o -name '*.markdown' \) -delete
find "$deps/node_modules" -name .bin -type d -prune -exec rm -rf {} +
mv "$deps/node_modules" "$stage/app/node_modules"
rm -rf "$deps"

docker build --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" -t "$image" -f Dockerfile "$root"
# Kept when the build fails, to look at; gone otherwise (it is ~180 MB).
rm -rf "$stage"
size=$(docker image inspect --format '{{.Size}}' "$image")
echo "build-image: built $image ($((size / 1024 / 1024)) MiB, base $base)"
