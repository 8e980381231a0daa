#!/usr/bin/env bash
# A Debian 12 (bookworm) root file system built from Debian's packages with mmdebstrap, for
# the deployment tests (tests/deploy/). The tests cache its output keyed by a hash of this
# file: a change to a package list or an option below builds it again.
# Usage: tests/deploy/mkroot.sh image OUT.tar   the base image the Dockerfile builds FROM
#        tests/deploy/mkroot.sh systemd OUT     a directory that boots with systemd-nspawn -b
set -euo pipefail
kind=$1 out=$2
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# What python:3.11-slim offers the Dockerfile: Python 3.11, venv (with pip), useradd.
image_pkgs=python3,python3-venv,passwd,ca-certificates
# A system orchd is installed into with `make install` and run by systemd; gcc and
# python3-dev let setup.py compile the request path with mypyc.
systemd_pkgs=systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,make,gcc,libc6-dev,python3-dev,curl,ca-certificates,passwd,procps,iproute2

case $kind in
  image) pkgs=$image_pkgs; variant=minbase ;;
  systemd) pkgs=$systemd_pkgs; variant=minbase ;;
  *) echo "usage: $0 image|systemd OUT" >&2; exit 2 ;;
esac

mmdebstrap --variant="$variant" --include="$pkgs" \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  --customize-hook='echo orchd-test > "$1"/etc/hostname' \
  bookworm "$out" \
  "deb $mirror bookworm main" \
  "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"
