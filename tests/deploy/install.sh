#!/usr/bin/env bash
# Inside the systemd test root (tests/deploy/mkroot.sh systemd), as root: orchd installed the
# way docs/deployment.md tells a Debian 12 administrator, with the request path compiled
# (make install PIP_INSTALL_FLAGS=--no-build-isolation, the build dependencies and mypy in
# Debian's python3 under /usr/local). Usage: install.sh SOURCE_DIR
set -euo pipefail
cd "$1"
# The build dependencies go where `pip install` as root puts them on Debian, /usr/local
# (--break-system-packages: Debian's own packages under /usr are left alone).
python3 - > /tmp/build-requirements.txt <<'PY'
import tomllib
pyproject = tomllib.load(open("pyproject.toml", "rb"))
project = pyproject["project"]
print("\n".join([*pyproject["build-system"]["requires"], "wheel", *project["dependencies"],
                 *project["optional-dependencies"]["lint"]]))
PY
python3 -m pip install --quiet --no-warn-script-location --break-system-packages \
  -r /tmp/build-requirements.txt
make install PYTHON=/usr/bin/python3 PIP_INSTALL_FLAGS=--no-build-isolation
