#!/usr/bin/env bash
# Builds the images the real test node runs, with no registry and no Docker: each is an OCI image layout written by
# hand (blobs, config, manifest, index.json) and packed as a tar that `ctr -n k8s.io images import` takes.
#   pause  the sandbox image: one static Go binary (hack/images/pause), user 65535
#   agent    a Debian rootfs from debootstrap (minbase + bash, git, ca-certificates, openssh-client for checkouts over
#            SSH) as one layer, the buildkite-agent of hack/bin as a second; default user buildkite (uid/gid 10000),
#            working directory /workspace
#   step     a step's `image:`: the same Debian layer and a second one with /etc/bk-step-image (hack/images/step) and
#            user `step` (uid/gid 1000, the default user); no buildkite-agent: the job runs the one copied into the pod
#   service  a sidecar: one static Go HTTP server (hack/images/service) on 127.0.0.1:$PORT (8080), user 65532
# Images are cached in ${BK_OPERATOR_CACHE:-~/.cache/buildkite-operator}/images, keyed by what goes into them (the
# functions below that build each part, the Debian suite, mirror and packages, the agent binary, the pause source): the
# tag is that key, so a second run prints the cached tarball at once and a change rebuilds only what changed (the
# Debian layer is cached apart). Building a new version of a part removes the older ones.
#
# Usage: hack/images/build.sh [pause|agent|step|service ...]   (default all; needs root for debootstrap)
# Prints one line per image on stdout: NAME REFERENCE TARBALL. Progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${BK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildkite-operator}/images
mkdir -p "$cache"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

REPOSITORY=localhost/buildkite-operator-test
SUITE=${BK_DEBIAN_SUITE:-bookworm}
PACKAGES=bash,git,ca-certificates,openssh-client
AGENT_UID=10000
STEP_UID=1000
SERVICE_UID=65532

log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
short_key() { sha256sum | cut -c1-16; }
arch=$(go env GOARCH)

# The Debian mirror apt already uses (deb822 .sources or a classic sources.list), unless BK_DEBIAN_MIRROR says.
debian_mirror() {
  if [ -n "${BK_DEBIAN_MIRROR:-}" ]; then echo "$BK_DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}') || true
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null) || true
  echo "${uri:-http://deb.debian.org/debian}"
}

# prune GLOB KEEP: removes the older builds of one part (called only after building a new one)
prune() {
  local glob=$1 keep=$2 f
  for f in $glob; do [ "$f" = "$keep" ] || [ ! -e "$f" ] || rm -f "$f"; done
}

# layer_tar DIR OUT [tar options...]: an uncompressed layer of DIR's content, owners kept numerically.
layer_tar() {
  local dir=$1 out=$2; shift 2
  tar -C "$dir" --numeric-owner --sort=name "$@" -cf "$out.$$.tmp" . && mv "$out.$$.tmp" "$out"
}

# oci_image NAME TAG CONFIG_JSON LAYER... -> prints the path of NAME-TAG.oci.tar (built unless cached)
oci_image() {
  local name=$1 tag=$2 config=$3; shift 3
  local out="$cache/$name-$tag.oci.tar" ref="$REPOSITORY/$name:$tag"
  if [ ! -f "$out" ]; then
    local dir; dir=$(mktemp -d "$cache/.layout-XXXXXX")
    mkdir -p "$dir/blobs/sha256"
    local layers="" diffs="" layer digest
    for layer in "$@"; do
      digest=$(sha "$layer")
      ln "$layer" "$dir/blobs/sha256/$digest" 2>/dev/null || cp "$layer" "$dir/blobs/sha256/$digest"
      layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$digest\",\"size\":$(stat -c %s "$layer")}"
      diffs+="${diffs:+,}\"sha256:$digest\""
    done
    blob() { # blob FILE MEDIATYPE -> writes FILE as a blob, prints its descriptor
      local d; d=$(sha "$1"); mv "$1" "$dir/blobs/sha256/$d"
      printf '{"mediaType":"%s","digest":"sha256:%s","size":%s' "$2" "$d" "$(stat -c %s "$dir/blobs/sha256/$d")"
    }
    printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":[%s]}}' \
      "$arch" "$config" "$diffs" >"$dir/config"
    local config_desc; config_desc="$(blob "$dir/config" application/vnd.oci.image.config.v1+json)}"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
      "$config_desc" "$layers" >"$dir/manifest"
    local manifest_desc; manifest_desc=$(blob "$dir/manifest" application/vnd.oci.image.manifest.v1+json)
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
      "$manifest_desc" "$ref" "$tag" >"$dir/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
    tar -C "$dir" -cf "$out.$$.tmp" oci-layout index.json blobs && mv "$out.$$.tmp" "$out"
    rm -rf "$dir"
    prune "$cache/$name-*.oci.tar" "$out"
  fi
  echo "$name $ref $out"
}

# go_layer NAME BINARY: the layer of a static Go program of hack/images/NAME as /BINARY, plus an /etc/passwd and
# /etc/group naming UID (for tools that look the user up). Prints the layer's path; the key is its input.
go_layer() {
  local name=$1 binary=$2 uid=${3:-}
  local key; key=$( { declare -f go_layer layer_tar; cat "$here/$name/main.go" "$here/$name/go.mod"; go version; echo "$arch $binary $uid"; } | short_key)
  local layer="$cache/$name-layer-$key.tar"
  if [ ! -f "$layer" ]; then
    log "building the $name image"
    local dir; dir=$(mktemp -d "$cache/.$name-XXXXXX")
    (cd "$here/$name" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/$binary" .) || die "building $name failed"
    if [ -n "$uid" ]; then
      mkdir -p "$dir/etc"
      echo "$name:x:$uid:$uid:$name:/:/nonexistent" >"$dir/etc/passwd"
      echo "$name:x:$uid:" >"$dir/etc/group"
    fi
    layer_tar "$dir" "$layer" --owner=0 --group=0 --mtime=@0
    rm -rf "$dir"
    prune "$cache/$name-layer-*.tar" "$layer"
  fi
  echo "$layer"
}

build_pause() {
  local layer; layer=$(go_layer pause pause)
  local key; key=$( { basename "$layer"; declare -f build_pause oci_image; } | short_key)
  oci_image pause "$key" '{"User":"65535:65535","Entrypoint":["/pause"]}' "$layer"
}

build_service() {
  local layer; layer=$(go_layer service bk-test-service "$SERVICE_UID")
  local config='{"User":"'$SERVICE_UID:$SERVICE_UID'","Env":["PORT=8080"],"Entrypoint":["/bk-test-service"]}'
  local key; key=$( { basename "$layer"; echo "$config"; declare -f build_service oci_image; } | short_key)
  oci_image service "$key" "$config" "$layer"
}

# The Debian layer: debootstrap of SUITE from the mirror, the agent's user, /workspace, apt's caches dropped.
debian_layer() {
  local mirror; mirror=$(debian_mirror)
  local key; key=$( { declare -f debian_layer layer_tar; echo "$SUITE $mirror $PACKAGES $arch $AGENT_UID"; } | short_key)
  local layer="$cache/debian-$SUITE-layer-$key.tar"
  if [ ! -f "$layer" ]; then
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || {
      log "installing debootstrap (apt-get)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >&2 \
        || die "apt-get install debootstrap failed"
    }
    local start=$SECONDS dir; dir=$(mktemp -d "$cache/.debian-XXXXXX")
    # debootstrap mounts /proc and /sys in the target while it works; never leave them behind
    trap 'grep -o " $dir/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l; rm -rf "$dir"' EXIT
    log "debootstrap --variant=minbase $SUITE from $mirror (log: $cache/debootstrap.log)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; die "debootstrap failed"; }
    local fs=$dir/rootfs
    echo "buildkite:x:$AGENT_UID:$AGENT_UID:Buildkite agent:/workspace:/bin/bash" >>"$fs/etc/passwd"
    echo "buildkite:x:$AGENT_UID:" >>"$fs/etc/group"
    echo "buildkite:!:19000::::::" >>"$fs/etc/shadow"
    install -d -m 0755 -o "$AGENT_UID" -g "$AGENT_UID" "$fs/workspace"
    rm -rf "$fs"/var/cache/apt/archives/*.deb "$fs"/var/lib/apt/lists/* "$fs"/var/log/*.log
    # runc mounts /dev, /proc and /sys itself; the device nodes debootstrap made stay out of the image
    layer_tar "$fs" "$layer" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/*
    rm -rf "$dir"; trap - EXIT
    prune "$cache/debian-$SUITE-layer-*.tar" "$layer"
    log "built the Debian layer in $((SECONDS - start)) s"
  fi
  echo "$layer"
}

build_agent() {
  local agent="$root/hack/bin/buildkite-agent"
  [ -x "$agent" ] || die "$agent is missing; run hack/build-binaries.sh buildkite-agent"
  local base; base=$(debian_layer)
  local agent_sha; agent_sha=$(sha "$(readlink -f "$agent")")
  local layer="$cache/agent-layer-${agent_sha:0:16}.tar"
  if [ ! -f "$layer" ]; then
    local dir; dir=$(mktemp -d "$cache/.agent-XXXXXX")
    install -D -m 0755 "$agent" "$dir/usr/local/bin/buildkite-agent"
    layer_tar "$dir" "$layer" --owner=0 --group=0 --mtime=@0
    rm -rf "$dir"
    prune "$cache/agent-layer-*.tar" "$layer"
  fi
  local config='{"User":"'$AGENT_UID:$AGENT_UID'","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],"WorkingDir":"/workspace","Entrypoint":["buildkite-agent"],"Cmd":["start"]}'
  local key; key=$( { basename "$base"; echo "$agent_sha $config"; declare -f build_agent oci_image; } | short_key)
  oci_image agent "$key" "$config" "$base" "$layer"
}

# The step image's own layer: its marker file and user `step` added to the Debian layer's passwd and group files.
build_step() {
  local base; base=$(debian_layer)
  local marker="$here/step/bk-step-image"
  local key; key=$( { basename "$base"; cat "$marker"; echo "$STEP_UID"; declare -f build_step layer_tar; } | short_key)
  local layer="$cache/step-layer-$key.tar"
  if [ ! -f "$layer" ]; then
    local dir; dir=$(mktemp -d "$cache/.step-XXXXXX")
    mkdir -p "$dir/etc"
    tar -xf "$base" -C "$dir" ./etc/passwd ./etc/group
    echo "step:x:$STEP_UID:$STEP_UID:Step:/workspace:/bin/bash" >>"$dir/etc/passwd"
    echo "step:x:$STEP_UID:" >>"$dir/etc/group"
    install -m 0644 "$marker" "$dir/etc/bk-step-image"
    layer_tar "$dir" "$layer" --owner=0 --group=0 --mtime=@0
    rm -rf "$dir"
    prune "$cache/step-layer-*.tar" "$layer"
  fi
  local config='{"User":"'$STEP_UID:$STEP_UID'","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],"WorkingDir":"/workspace","Cmd":["/bin/bash"]}'
  local key2; key2=$( { basename "$layer"; echo "$config"; declare -f build_step oci_image; } | short_key)
  oci_image step "$key2" "$config" "$base" "$layer"
}

want=("$@"); [ ${#want[@]} -gt 0 ] || want=(pause agent step service)
for name in "${want[@]}"; do
  case $name in
    pause) build_pause ;;
    agent) build_agent ;;
    step) build_step ;;
    service) build_service ;;
    *) die "unknown image '$name' (known: pause agent step service)" ;;
  esac
done
