# orchd, the Orchestrator API gateway, as a container image.
#   docker build -t orchestrator-gateway:1.0.0 .
#   docker run -p 8000:8000 -v "$PWD/etc:/etc/orchd:ro" orchestrator-gateway:1.0.0
# The image listens on 0.0.0.0:8000 (HOST/PORT below override server.host/server.port),
# keeps API registrations in the volume /var/lib/orchd and runs as the user orchd (10001).
# See docs/deployment.md.

FROM python:3.11-slim AS build
# A C compiler for the request path, compiled with mypyc (setup.py); not in the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY orchd ./orchd
COPY orchctl ./orchctl
# The dependencies first: mypyc type-checks the request path against them (setup.py).
RUN pip install --no-cache-dir 'setuptools>=68' '.[lint]' \
 && pip wheel --no-cache-dir --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
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
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
COPY etc/orchestrator.yaml /etc/orchd/orchestrator.yaml

ENV HOST=0.0.0.0 \
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
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "orchd"]
CMD []
