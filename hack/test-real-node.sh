#!/usr/bin/env bash
# The real-node test tier (`npm run test:real-node`): job pods in real containers on a real node of the test cluster
# — kubelet, containerd, runc, the CNI bridge and kube-router's NetworkPolicy firewall, as processes of the test run
# (test/support/real-node.ts). Builds what is missing first: the node's binaries (hack/build-node.sh, cached per
# version; about 10 minutes cold) and its images (hack/images/build.sh: debootstrap, cached by content; under a
# minute cold). Expects the TypeScript build of hack/setup.sh (builds it when dist/ is missing).
#
# Needs Linux and root: kubelet, containerd and iptables do. Elsewhere it says so and skips (exit 0), as it does with
# BK_SKIP_REAL_NODE=1. Mocha arguments pass through, e.g. `hack/test-real-node.sh --grep NetworkPolicy`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="$root/node_modules/.bin:$PATH"

skip() { echo "real-node tests SKIPPED: $*"; exit 0; }
[ "${BK_SKIP_REAL_NODE:-}" != 1 ] || skip "BK_SKIP_REAL_NODE=1"
[ "$(uname -s)" = Linux ] || skip "a real node needs Linux (this is $(uname -s))"
[ "$(id -u)" = 0 ] || skip "a real node needs root (kubelet, containerd, iptables); run as root"

timed() { local start=$SECONDS; "$@"; echo "   ($((SECONDS - start)) s)"; }
echo "== real node binaries (hack/build-node.sh)"
timed bash hack/build-node.sh
echo "== real node images (hack/images/build.sh)"
images() { bash hack/images/build.sh >/dev/null; }
timed images
if [ ! -d dist/test/real-node ]; then
  echo "== TypeScript build"
  timed tsc -p .
fi
exec mocha --timeout 300000 'dist/test/real-node/**/*.test.js' "$@"
