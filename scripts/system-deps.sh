#!/usr/bin/env bash
# Install the Debian packages the test suite needs (as root), or print the exact command.
# Usage: scripts/system-deps.sh [test|bench]
set -euo pipefail
set_name=${1:-test}
# command-to-check:package
test_pkgs=(
  "tmux:tmux"
  "groff:groff-base"
  "systemd-analyze:systemd"
  "chromium:chromium"
  "chromedriver:chromium-driver"
  "etcd:etcd-server"
  # tests/deploy: the image (buildah, podman import), root file systems, booting systemd
  "buildah:buildah"
  "podman:podman"
  "mmdebstrap:mmdebstrap"
  "systemd-nspawn:systemd-container"
  # HTTPS: real TLS clients and a TLS grader
  "testssl:testssl.sh"
  "curl:curl"
  "openssl:openssl"
  # a real load balancer in front (PROXY protocol, X-Forwarded-For)
  "haproxy:haproxy"
  "nginx:nginx-light"
)
bench_pkgs=(
  "wrk:wrk"
  "nginx:nginx-light"
  "caddy:caddy"
  # the two-core table's HAProxy rows
  "haproxy:haproxy"
  "taskset:util-linux"
  # bench/syscalls.py: system calls per request
  "strace:strace"
  "perf:linux-perf"
)
if [ "$set_name" = bench ]; then pkgs=("${bench_pkgs[@]}"); else pkgs=("${test_pkgs[@]}"); fi
missing=()
for entry in "${pkgs[@]}"; do
  cmd=${entry%%:*}; pkg=${entry#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/usr/bin/$cmd" ]; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages; install them with:"
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
fi
