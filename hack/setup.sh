#!/usr/bin/env bash
# Installs and builds whatever is missing, so `npm test` and `npm run demo` work on a fresh machine:
# npm dependencies (including the project's own Node, the npm `node` package), the Go binaries of hack/, and the
# TypeScript build. Each step is skipped when already up to date, so a warm run takes seconds.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
phase() { printf '\n== %s\n' "$*"; }
timed() { local start=$SECONDS; "$@"; echo "   ($((SECONDS - start)) s)"; }

command -v go >/dev/null || { echo "setup: Go is missing; install Go >= 1.26 and re-run" >&2; exit 1; }
command -v openssl >/dev/null || { echo "setup: openssl is missing (the test cluster generates its certificates with it): apt-get install openssl" >&2; exit 1; }

stamp=node_modules/.install-stamp
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -x node_modules/.bin/node ] || [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  phase "npm ci"
  timed npm ci --no-audit --no-fund
  echo "$lock_sum" > "$stamp"
fi
phase "Go binaries (hack/build-binaries.sh)"
timed bash hack/build-binaries.sh
phase "TypeScript build"
rm -rf dist  # stale output of deleted sources must not run as tests
timed node_modules/.bin/tsc -p .
