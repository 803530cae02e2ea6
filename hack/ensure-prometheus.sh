#!/usr/bin/env bash
# Makes sure Debian's prometheus package (prometheus and promtool) is installed, for the signals test
# (test/integration/signals.test.ts), which starts its own prometheus as a child process on loopback with a config
# and storage of its own. The package's system service is never wanted: the install is told to start no service, and
# the service the package enables for the next boot is disabled (and stopped, if something started it anyway).
# Its log goes to ${BK_OPERATOR_CACHE:-~/.cache/buildkite-operator}/apt-prometheus.log.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then exit 0; fi
cache=${BK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildkite-operator}
mkdir -p "$cache"
log="$cache/apt-prometheus.log"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

echo "ensure-prometheus: installing Debian's prometheus (for promtool and the dashboard test)"
# A policy-rc.d that answers 101 makes Debian's maintainer scripts (invoke-rc.d, deb-systemd-invoke) start nothing.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  own_policy=1
fi
trap 'if [ -n "$own_policy" ]; then $sudo rm -f "$policy"; fi' EXIT
# --no-install-recommends: the recommended prometheus-node-exporter is one more system service.
install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }
install >"$log" 2>&1 || { $sudo apt-get update -q >>"$log" 2>&1 && install >>"$log" 2>&1; } || {
  tail -n 20 "$log" >&2
  echo "ensure-prometheus: installing prometheus failed (log above)" >&2
  exit 1
}

if [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now prometheus.service >>"$log" 2>&1
else
  # No systemd running: update-rc.d turns the SysV start links into stop links and removes the unit's boot link;
  # a daemon the init script started anyway is stopped.
  $sudo update-rc.d prometheus disable >>"$log" 2>&1
  if $sudo /etc/init.d/prometheus status >/dev/null 2>&1; then $sudo /etc/init.d/prometheus stop >>"$log" 2>&1; fi
fi
echo "ensure-prometheus: $(prometheus --version 2>&1 | head -n 1) installed; its system service is disabled"
