#!/usr/bin/env bash
# Makes sure a Docker engine answers: when none does, installs Debian's docker.io (if dockerd is missing) and starts
# dockerd in the background, logging to ${BK_OPERATOR_CACHE:-~/.cache/buildkite-operator}/dockerd.log.
# Exits non-zero with the engine's last log lines when it cannot run, so the error is never a silent skip.
set -euo pipefail
cache=${BK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildkite-operator}
mkdir -p "$cache"
log="$cache/dockerd.log"

if docker info >/dev/null 2>&1; then exit 0; fi

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: no Docker engine; installing Debian's docker.io"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >"$cache/apt-docker.log" 2>&1 || {
    $sudo apt-get update -q >>"$cache/apt-docker.log" 2>&1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >>"$cache/apt-docker.log" 2>&1
  } || { tail -n 20 "$cache/apt-docker.log" >&2; echo "ensure-docker: installing docker.io failed (log above)" >&2; exit 1; }
fi

if ! pgrep -x dockerd >/dev/null; then
  echo "ensure-docker: starting dockerd (log: $log)"
  # setsid: dockerd outlives this script, so later test steps (and testcontainers) can use it.
  $sudo setsid dockerd >"$log" 2>&1 < /dev/null &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then echo "ensure-docker: engine ready ($(docker version --format '{{.Server.Version}}'))"; exit 0; fi
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s. Last log lines ($log):" >&2
tail -n 20 "$log" >&2
exit 1
