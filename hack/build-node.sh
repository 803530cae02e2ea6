#!/usr/bin/env bash
# Builds what a real node of the test cluster runs (test/support/real-node.ts, the `test/real-node/` tier) from the pins
# in hack/versions.env into hack/bin/, next to the control plane: kubelet (same k8s.io/kubernetes module as
# kube-apiserver, via hack/build-binaries.sh), containerd + containerd-shim-runc-v2 + ctr, runc, crictl and kube-router
# (its NetworkPolicy firewall only). Installs the Debian packages the node needs when they are missing: the CNI plugins
# (bridge, host-local, loopback in /usr/lib/cni), iptables and ipset (kube-router), libseccomp-dev and gcc (runc is
# built with cgo), curl (a NetworkPolicy test probes with it), git and openssh-server (test/support/git-server.ts serves
# a private repository with `git http-backend` and a throwaway sshd of its own on a high port; the package's service
# is not used). Each binary is built once per version into the same cache as build-binaries.sh and checked against its
# pin, so a second run takes a second. Linux only, as root.
#
# Usage: hack/build-node.sh [name ...]   (default: all of kubelet containerd containerd-shim-runc-v2 ctr runc crictl
#                                         kube-router, and the Debian packages)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${BK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildkite-operator}
out="$here/bin"
mkdir -p "$out" "$cache/bin"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

die() { echo "build-node: $*" >&2; exit 1; }
command -v go >/dev/null || die "Go is not installed; install Go >= 1.26 (https://go.dev/dl) and re-run."
[ "$(uname -s)" = Linux ] || die "a real node needs Linux (found $(uname -s))"

# Debian packages: a command or file that proves each is there, and the package that provides it.
apt_install() {
  local missing=() check pkg
  while [ $# -gt 0 ]; do
    check=$1 pkg=$2; shift 2
    if [ "${check#/}" != "$check" ]; then [ -e "$check" ] || missing+=("$pkg")
    else command -v "$check" >/dev/null || missing+=("$pkg"); fi
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}; install them as root: apt-get install ${missing[*]}"
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  echo "build-node: installing Debian packages ${missing[*]}"
  local log="$cache/apt-node.log"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1 \
    || { apt-get update >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; }; } \
    || { tail -n 20 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
}

# build NAME VERSION CHECK_REGEX VERSION_ARGS -- command that writes $cache/bin/NAME-VERSION (as build-binaries.sh)
build() {
  local name=$1 version=$2 expect=$3 args=$4; shift 4
  local target="$cache/bin/$name-$version"
  if [ ! -x "$target" ]; then
    local start=$SECONDS
    echo "build-node: building $name $version (cached afterwards in $cache/bin)"
    "$@" "$target" || die "building $name $version failed (see the Go output above)"
    echo "build-node: built $name $version in $((SECONDS - start))s"
  fi
  local reported
  # shellcheck disable=SC2086 # args is a word list on purpose
  reported=$("$target" $args 2>&1 | head -n 3) || true
  if ! grep -qE "$expect" <<<"$reported"; then
    rm -f "$target"
    die "$name reports '$reported' but hack/versions.env pins $version; the cached build was removed, re-run to rebuild"
  fi
  ln -sf "$target" "$out/$name"
}

# go_install PKG@VERSION LDFLAGS TAGS CGO TARGET: `go install` into a scratch GOBIN, then moved to TARGET.
go_install() {
  local pkg=$1 ldflags=$2 tags=$3 cgo=$4 target=$5 tmp; tmp=$(mktemp -d)
  local bin=${pkg%@*}; bin=${bin##*/}
  CGO_ENABLED=$cgo GOBIN=$tmp go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$pkg" && mv "$tmp/$bin" "$target"
  local rc=$?; rm -rf "$tmp"; return $rc
}

containerd_ldflags() {
  local p=github.com/containerd/containerd/v2/version
  echo "-X $p.Version=$CONTAINERD_VERSION -X $p.Package=github.com/containerd/containerd/v2 -X $p.Revision=$CONTAINERD_VERSION"
}

want=("$@"); [ ${#want[@]} -gt 0 ] || want=(packages kubelet containerd containerd-shim-runc-v2 ctr runc crictl kube-router)
for name in "${want[@]}"; do
  case $name in
    packages) apt_install /usr/lib/cni/bridge containernetworking-plugins iptables iptables ipset ipset curl curl \
      /usr/sbin/sshd openssh-server /usr/lib/git-core/git-http-backend git ;;
    kubelet) bash "$here/build-binaries.sh" kubelet ;;
    containerd|ctr)
      build "$name" "$CONTAINERD_VERSION" "$name github.com/containerd/containerd/v2 $CONTAINERD_VERSION" --version \
        go_install "github.com/containerd/containerd/v2/cmd/$name@$CONTAINERD_VERSION" "$(containerd_ldflags)" urfave_cli_no_docs 0 ;;
    containerd-shim-runc-v2)
      # no_grpc: the shim speaks ttrpc only, as containerd's Makefile builds it
      build "$name" "$CONTAINERD_VERSION" "Version: +$CONTAINERD_VERSION" -v \
        go_install "github.com/containerd/containerd/v2/cmd/$name@$CONTAINERD_VERSION" "$(containerd_ldflags)" "urfave_cli_no_docs no_grpc" 0 ;;
    runc)
      # runc's Makefile adds the libpathrs tag too, which needs a Rust library; without it runc uses its Go fallback.
      apt_install gcc gcc pkg-config pkg-config /usr/include/seccomp.h libseccomp-dev
      build runc "$RUNC_VERSION" "runc version ${RUNC_VERSION#v}" --version \
        go_install "github.com/opencontainers/runc@$RUNC_VERSION" "-X main.gitCommit=$RUNC_VERSION" "seccomp urfave_cli_no_docs" 1 ;;
    crictl)
      build crictl "$CRICTL_VERSION" "crictl version $CRICTL_VERSION" --version \
        go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "" 0 ;;
    kube-router)
      build kube-router "$KUBE_ROUTER_VERSION" "version $KUBE_ROUTER_VERSION" --version \
        go_install "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION" \
        "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" "" 0 ;;
    *) die "unknown component '$name' (known: packages kubelet containerd containerd-shim-runc-v2 ctr runc crictl kube-router)" ;;
  esac
done
