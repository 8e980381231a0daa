# orchd, the Orchestrator API gateway, as a container image.
#   docker build -t orchestrator-gateway:1.0.0 .
#   docker run -p 8000:8000 -v "$PWD/etc:/etc/orchd:ro" orchestrator-gateway:1.0.0
# The image listens on 0.0.0.0:8000 (HOST/PORT below override server.host/server.port),
# keeps API registrations in the volume /var/lib/orchd and runs as the user orchd (10001).
# orchd and its dependencies live in the virtual environment /opt/orchd, so the image builds
# on python:3.11-slim (Python in /usr/local) as on a plain Debian 12 base with python3 and
# python3-venv (Python in /usr/bin, pip refusing the system's packages, PEP 668):
#   docker build --build-arg BASE=debian-with-python3 .
# See docs/deployment.md.

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Behind a TLS-intercepting proxy, pip needs the proxy's CA: mount a bundle into the build
# and name it, e.g. buildah bud -v /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro
# --build-arg PIP_CERT=/run/ca.crt (nothing of it stays in the image).
ARG PIP_CERT
# A C compiler for the request path, compiled with mypyc (setup.py), and the Python headers
# when the base lacks them (Debian's python3-dev); none of it is in the final image.
RUN headers=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
 && if [ -e "$headers/Python.h" ]; then dev=; else dev=python3-dev; fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev $dev \
 && rm -rf /var/lib/apt/lists/*
# The build's own environment (/opt/build: mypyc, the lint tools); the image gets /opt/orchd.
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --upgrade pip 'setuptools>=77' wheel
ENV PATH=/opt/build/bin:$PATH
WORKDIR /src
# The dependencies first, from pyproject.toml alone, so that this layer is reused while
# only orchd's code changes; mypyc type-checks the request path against them (setup.py).
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["lint"]))' > requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt \
 && pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt
COPY setup.py README.md ./
COPY orchd ./orchd
COPY orchctl ./orchctl
# (setup.py says why when it cannot compile: a type error, no compiler; orchd then runs
# the same modules as Python, slower; tests/deploy/test_image.py checks the compiled build.)
RUN pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels/orchd . \
 && python -c 'import zipfile, glob; \
names = zipfile.ZipFile(glob.glob("/wheels/orchd/*.whl")[0]).namelist(); \
print("the request path is compiled" if any(n.endswith(".so") for n in names) else \
      "WARNING: the request path is not compiled (pip wheel -v . shows why)")'
# Only orchd's runtime dependencies (the wheels of requirements.txt less the lint tools),
# in the environment the image runs. The image copies it: a COPY --from is rebuilt whenever
# what it copies changes, where a RUN with the build stage bind-mounted could be taken from
# the layer cache with an older wheel in it.
RUN python3 -m venv /opt/orchd \
 && /opt/orchd/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels \
        /wheels/orchd/*.whl

FROM ${BASE}
ARG ORCHD_UID=10001
# tini as process 1: reaps children and forwards signals, so orchd is not process 1 and
# `orchctl restart` (which hands the listeners to a successor process) works in the container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid "${ORCHD_UID}" orchd \
 && useradd --system --uid "${ORCHD_UID}" --gid orchd --home-dir /var/lib/orchd \
        --no-create-home --shell /usr/sbin/nologin orchd \
 && install -d -o orchd -g orchd -m 0750 /var/lib/orchd /run/orchd \
 && install -d -m 0755 /etc/orchd
COPY --from=build /opt/orchd /opt/orchd
COPY etc/orchestrator.yaml /etc/orchd/orchestrator.yaml

ENV PATH=/opt/orchd/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    CONFIG_PATH=/etc/orchd/orchestrator.yaml \
    ORCHD_STATE_DIR=/var/lib/orchd \
    ORCHD_CONTROL_SOCKET=/run/orchd/orchd.sock \
    ORCHCTL_SOCKET=/run/orchd/orchd.sock \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER orchd:orchd
WORKDIR /var/lib/orchd
VOLUME ["/var/lib/orchd"]
EXPOSE 8000
# orchd drains in-flight requests on SIGTERM for server.shutdown_timeout (30 s): give
# `docker stop` at least that long (docker stop -t 40, compose stop_grace_period).
STOPSIGNAL SIGTERM
# `python` is the virtual environment's (PATH), whichever base the image was built on.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "orchd"]
CMD []
