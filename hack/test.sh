#!/usr/bin/env bash
# `npm test`: installs and builds whatever is missing, then lint, unit, integration (real local control plane) and
# end-to-end (local Docker engine) tests. Prints the time of each phase; stops at the first failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="$root/node_modules/.bin:$PATH"
declare -a report=()
total=$SECONDS
phase() {
  local name=$1 start=$SECONDS; shift
  printf '\n==== %s\n' "$name"
  if ! "$@"; then
    printf '\n==== %s FAILED after %d s\n' "$name" $((SECONDS - start)) >&2
    exit 1
  fi
  report+=("$(printf '%-24s %4d s' "$name" $((SECONDS - start)))")
}
phase "setup" bash hack/setup.sh
phase "lint" npm run --silent lint
phase "generated files" npm run --silent verify
phase "unit tests" npm run --silent test:unit
phase "integration tests" npm run --silent test:integration
phase "end-to-end tests" npm run --silent test:e2e
phase "real-node tests" npm run --silent test:real-node
printf '\n==== summary\n'
printf '%s\n' "${report[@]}"
printf '%-24s %4d s\n' "total" $((SECONDS - total))
