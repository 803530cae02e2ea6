#!/usr/bin/env bash
# Builds every Go component the tests and the demo need from the pins in hack/versions.env into hack/bin/.
# Each binary is built once per version into a cache outside the work tree
# (${BK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildkite-operator}), so a fresh clone on a warm machine takes
# seconds and a new pin rebuilds only what changed. Every binary's own --version output is checked against its pin.
#
# Usage: hack/build-binaries.sh [--with-peers] [name ...]
#   no names: everything the tests and the demo need; --with-peers adds the benchmark peers (agent-stack-k8s), which
#   nothing else needs and `npm test` never builds. `hack/build-binaries.sh agent-stack-k8s` builds only that peer.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${BK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildkite-operator}
out="$here/bin"
mkdir -p "$out" "$cache/bin" "$cache/src"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

die() { echo "build-binaries: $*" >&2; exit 1; }
command -v go >/dev/null || die "Go is not installed; install Go >= 1.26 (https://go.dev/dl) and re-run."

kube_minor=${KUBERNETES_VERSION#v1.}; kube_minor=${kube_minor%%.*}
staging=v0.${KUBERNETES_VERSION#v1.}

# Some modules (k8s.io/kubernetes, etcd's server) point sibling modules at local folders with `replace`, so they
# cannot be `go install`ed directly. A small module of our own requires the pinned module and replaces each such
# sibling with its published twin (k8s.io/* staging modules are published as v0.X.Y, etcd's at the same version).
# wrapper_module MODULE VERSION SIBLING_VERSION PKG... -> prints the wrapper's directory
wrapper_module() {
  local module=$1 version=$2 sibling=$3; shift 3
  local dir="$cache/src/$(echo "$module" | tr '/.' '__')-$version"
  if [ ! -f "$dir/.ready" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    local modfile; modfile=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$modfile" ] || die "could not download $module@$version from the Go module proxy (is GOPROXY reachable?)"
    {
      echo "module local/wrapper"
      echo "go 1.26"
      echo "require $module $version"
      # both `replace (...)` blocks and single-line replaces; only local-folder targets (./ or ../), not sample-* demos
      sed -e 's/^replace //' "$modfile" | awk -v s="$sibling" '$2 == "=>" && $3 ~ /^\.\.?\// && $3 !~ /FORBIDDEN/ && $1 !~ /sample-/ {print "replace " $1 " => " $1 " " s}'
      for r in ${EXTRA_REPLACES:-}; do echo "replace ${r%%=*} => ${r#*=}" | sed 's/@/ /'; done
    } > "$dir/go.mod"
    { echo "//go:build tools"; echo; echo "package tools"; echo; echo "import ("
      for pkg in "$@"; do printf '\t_ "%s"\n' "$pkg"; done; echo ")"; } > "$dir/tools.go"
    (cd "$dir" && go mod tidy -e >"$dir/tidy.log" 2>&1) || { cat "$dir/tidy.log" >&2; die "resolving $module@$version failed"; }
    touch "$dir/.ready"
  fi
  echo "$dir"
}

kube_module() {
  wrapper_module k8s.io/kubernetes "$KUBERNETES_VERSION" "$staging" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet
}

go_build_etcd() {
  local dir; dir=$(wrapper_module go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION" go.etcd.io/etcd/server/v3)
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$cache/bin/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3)
}

# build NAME VERSION CHECK_REGEX -- command that writes the binary to $target
build() {
  local name=$1 version=$2 expect=$3; shift 3
  local target="$cache/bin/$name-$version"
  if [ ! -x "$target" ]; then
    local start=$SECONDS
    echo "build-binaries: building $name $version (cached afterwards in $cache/bin)"
    "$@" || die "building $name $version failed (see the Go output above)"
    echo "build-binaries: built $name $version in $((SECONDS - start))s"
  fi
  local reported
  reported=$("$target" "${VERSION_ARGS[@]}" 2>&1 | head -n 3) || true
  if ! grep -qE "$expect" <<<"$reported"; then
    rm -f "$target"
    die "$name reports '$reported' but hack/versions.env pins $version; the cached build was removed, re-run to rebuild"
  fi
  ln -sf "$target" "$out/$name"
}

go_build_kube() {
  local cmd=$1 dir; dir=$(kube_module)
  local pkg=k8s.io/component-base/version
  (cd "$dir" && go build -trimpath -o "$cache/bin/$cmd-$KUBERNETES_VERSION" \
    -ldflags "-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" \
    "k8s.io/kubernetes/cmd/$cmd")
}

# The agent imports drjosh.dev/zzglob, a vanity path the module proxy here does not serve; the same module is
# published under its GitHub path, so the wrapper replaces the one with the other (same code, same version).
go_build_agent() {
  local dir; dir=$(EXTRA_REPLACES="drjosh.dev/zzglob=github.com/DrJosh9000/zzglob@v0.4.3" \
    wrapper_module github.com/buildkite/agent/v3 "$BUILDKITE_AGENT_VERSION" "$BUILDKITE_AGENT_VERSION" github.com/buildkite/agent/v3)
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$cache/bin/buildkite-agent-$BUILDKITE_AGENT_VERSION" github.com/buildkite/agent/v3)
}

go_install() { # go_install NAME MODULE_PKG VERSION LDFLAGS
  local name=$1 pkg=$2 version=$3 ldflags=$4 tmp; tmp=$(mktemp -d)
  GOBIN=$tmp go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version" && mv "$tmp/$(basename "$pkg")" "$cache/bin/$name-$version"
  local rc=$?; rm -rf "$tmp"; return $rc
}

# agent-stack-k8s (benchmark peer). Its source comes from the Go module proxy when the proxy serves the pinned
# pseudo-version; where it does not (some proxies refuse the module), from a git clone named by AGENT_STACK_K8S_SRC
# that contains the pinned commit. Either way the tree is checked out once per pin under $cache/src. Like the agent it
# imports drjosh.dev/zzglob, so the same replace applies; -mod=mod lets go.sum take the replacement's hash.
agent_stack_k8s_source() {
  local module=github.com/buildkite/agent-stack-k8s/v2 version=$AGENT_STACK_K8S_VERSION
  local commit=${version##*-} dir="$cache/src/agent-stack-k8s-$version" modzip
  if [ ! -f "$dir/.ready" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    modzip=$(go mod download -json "$module@$version" 2>/dev/null | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') || true
    if [ -n "$modzip" ] && [ -f "$modzip/go.mod" ]; then
      { cp -R "$modzip/." "$dir/" && chmod -R u+w "$dir"; } || die "could not copy $modzip"
    elif [ -n "${AGENT_STACK_K8S_SRC:-}" ]; then
      git -C "$AGENT_STACK_K8S_SRC" rev-parse -q --verify "$commit^{commit}" >/dev/null \
        || die "AGENT_STACK_K8S_SRC=$AGENT_STACK_K8S_SRC has no commit $commit (the pin $version)"
      git -C "$AGENT_STACK_K8S_SRC" archive "$commit" | tar -x -C "$dir" || die "could not export $commit from $AGENT_STACK_K8S_SRC"
    else
      rm -rf "$dir"
      die "the Go module proxy does not serve $module@$version here. Set AGENT_STACK_K8S_SRC to a git clone of
  github.com/buildkite/agent-stack-k8s that contains commit $commit (tag $AGENT_STACK_K8S_RELEASE) and re-run."
    fi
    grep -q "^module $module\$" "$dir/go.mod" || die "$dir/go.mod is not module $module"
    (cd "$dir" && go mod edit -replace drjosh.dev/zzglob=github.com/DrJosh9000/zzglob@v0.4.3) || die "editing $dir/go.mod failed"
    touch "$dir/.ready"
  fi
  echo "$dir"
}

go_build_agent_stack_k8s() {
  local dir; dir=$(agent_stack_k8s_source) || return 1
  (cd "$dir" && go build -mod=mod -trimpath -o "$cache/bin/agent-stack-k8s-$AGENT_STACK_K8S_VERSION" \
    -ldflags "-s -w -X github.com/buildkite/agent-stack-k8s/v2/internal/version.version=$AGENT_STACK_K8S_RELEASE" .)
}

defaults=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm buildkite-agent)
peers=(agent-stack-k8s)
want=()
for arg in "$@"; do
  case $arg in
    --with-peers) want+=("${peers[@]}") ;;
    -*) die "unknown option '$arg' (known: --with-peers)" ;;
    *) want+=("$arg") ;;
  esac
done
# No names (only --with-peers, or nothing): the default set, plus the peers when asked.
named=0; for arg in "$@"; do [ "$arg" = --with-peers ] || named=1; done
[ $named -eq 1 ] || want=("${defaults[@]}" "${want[@]}")
for name in "${want[@]}"; do
  case $name in
    etcd) VERSION_ARGS=(--version)
      build etcd "$ETCD_VERSION" "etcd Version: ${ETCD_VERSION#v}" go_build_etcd ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet) VERSION_ARGS=(--version)
      build "$name" "$KUBERNETES_VERSION" "Kubernetes $KUBERNETES_VERSION" go_build_kube "$name" ;;
    kubectl) VERSION_ARGS=(version --client)
      build kubectl "$KUBERNETES_VERSION" "Client Version: $KUBERNETES_VERSION" go_build_kube kubectl ;;
    kwok) VERSION_ARGS=(--version)
      build kwok "$KWOK_VERSION" "$KWOK_VERSION" go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" ;;
    helm) VERSION_ARGS=(version --short)
      build helm "$HELM_VERSION" "^$HELM_VERSION" go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    buildkite-agent) VERSION_ARGS=(--version)
      build buildkite-agent "$BUILDKITE_AGENT_VERSION" "version ${BUILDKITE_AGENT_VERSION#v}" go_build_agent ;;
    agent-stack-k8s) VERSION_ARGS=(version)
      build agent-stack-k8s "$AGENT_STACK_K8S_VERSION" "^$AGENT_STACK_K8S_RELEASE\$" go_build_agent_stack_k8s ;;
    *) die "unknown component '$name' (known: etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kwok helm buildkite-agent agent-stack-k8s)" ;;
  esac
done
