# Orchestrator: orchd (the gateway daemon) and orchctl (its control tool).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: run test test-deploy lint check-config install bench bench-deps bench-reload bench-propagation bench-health soak clean sysdeps bench-metrics bench-syscalls

# The request path is compiled with mypyc (setup.py): a change to it reinstalls.
COMPILED := $(addprefix orchd/,front.py http1.py edge_rules.py proxy.py upstream.py traffic.py \
              log.py router.py balancer.py breaker.py target.py inflight.py \
              auth/guard.py auth/gateway.py auth/jwt.py auth/ratelimit.py auth/cors.py)

$(STAMP): pyproject.toml setup.py $(COMPILED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77'
	ORCHD_PURE=1 $(BIN)/python -m pip install -q -e '.[test,lint]'
	@# Then compiled (setup.py): mypyc type-checks against the dependencies just installed.
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

## run: orchd in the foreground on the example config, port 8000, state under ./run/
run: $(STAMP)
	mkdir -p run
	$(BIN)/orchd --config etc/orchestrator.yaml --port 8000 \
		--state-dir run/state --control-socket run/orchd.sock

sysdeps:
	scripts/system-deps.sh test

## test: install what the tests need, then run them
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q tests

## test-deploy: the container image built and run, and orchd under a booted systemd
##              (as root; root file systems cached in ~/.cache/orchd-test)
test-deploy: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q tests/deploy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## install: orchd and orchctl, systemd units, man pages, example config (DESTDIR, PREFIX)
BINDIR         ?= $(PREFIX)/bin
MANDIR         ?= $(PREFIX)/share/man
SYSCONFDIR     ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR    ?= $(PREFIX)/lib/sysusers.d
DOCDIR         ?= $(PREFIX)/share/doc/orchd
PIP_INSTALL_FLAGS ?=

# Debian's own python3 (not a venv) installs with its posix_local scheme, which puts `local/`
# under the prefix: pip's --prefix /usr/local would give /usr/local/local/bin. For it,
# PREFIX=/usr/local is --prefix /usr (/usr/local/bin, /usr/local/lib/python3.X/dist-packages,
# on python3's path) and any other PREFIX uses Debian's deb_system scheme ($(PREFIX)/bin,
# $(PREFIX)/lib/python3/dist-packages, as Debian's own packages).
DEBIAN_PYTHON = $(shell $(PYTHON) -c 'import sys, sysconfig; print(int(sys.prefix == \
	sys.base_prefix and "posix_local" in sysconfig.get_scheme_names()))' 2>/dev/null)
PIP_PREFIX = $(if $(filter 1,$(DEBIAN_PYTHON)),$(if $(filter /usr/local,$(PREFIX)),/usr,$(PREFIX)),$(PREFIX))
PIP_LAYOUT = $(if $(filter 1,$(DEBIAN_PYTHON)),$(if $(filter /usr/local,$(PREFIX)),posix_local,deb_system))

install:
	DEB_PYTHON_INSTALL_LAYOUT=$(PIP_LAYOUT) $(PYTHON) -m pip install --quiet \
		--no-warn-script-location --root "$(DESTDIR)/" --prefix "$(PIP_PREFIX)" \
		$(if $(DESTDIR),--ignore-installed) $(PIP_INSTALL_FLAGS) .
	test -x "$(DESTDIR)$(BINDIR)/orchd"
	install -d "$(DESTDIR)$(SYSTEMDUNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)" \
		"$(DESTDIR)$(MANDIR)/man1" "$(DESTDIR)$(MANDIR)/man5" "$(DESTDIR)$(MANDIR)/man8" \
		"$(DESTDIR)$(SYSCONFDIR)/orchd" "$(DESTDIR)$(DOCDIR)"
	sed -e 's#/usr/local/bin/orchd#$(BINDIR)/orchd#g' -e 's#/etc/orchd/#$(SYSCONFDIR)/orchd/#g' \
		systemd/orchd.service > "$(DESTDIR)$(SYSTEMDUNITDIR)/orchd.service"
	chmod 644 "$(DESTDIR)$(SYSTEMDUNITDIR)/orchd.service"
	install -m 644 systemd/orchd.socket "$(DESTDIR)$(SYSTEMDUNITDIR)/orchd.socket"
	install -m 644 systemd/orchd.sysusers "$(DESTDIR)$(SYSUSERSDIR)/orchd.conf"
	install -m 644 man/orchctl.1 "$(DESTDIR)$(MANDIR)/man1/orchctl.1"
	install -m 644 man/orchestrator.yaml.5 "$(DESTDIR)$(MANDIR)/man5/orchestrator.yaml.5"
	install -m 644 man/orchd.8 "$(DESTDIR)$(MANDIR)/man8/orchd.8"
	install -m 644 etc/orchestrator.yaml "$(DESTDIR)$(DOCDIR)/orchestrator.yaml.example"
	test -e "$(DESTDIR)$(SYSCONFDIR)/orchd/orchestrator.yaml" || \
		install -m 644 etc/orchestrator.yaml "$(DESTDIR)$(SYSCONFDIR)/orchd/orchestrator.yaml"

check-config: $(STAMP)
	$(BIN)/orchd --check --config etc/orchestrator.yaml

clean:
	rm -rf run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
	rm -f orchd/*.so

## bench-deps: the Debian packages the benchmarks use (wrk, nginx-light, caddy, util-linux,
##             strace, linux-perf)
bench-deps:
	scripts/system-deps.sh bench

## bench: per-core req/s, p50/p99 of orchd next to nginx, Caddy and a bare aiohttp proxy, over HTTP
##        and HTTPS (BENCH_ARGS=--quick for one short round, BENCH_ARGS=--no-tls without HTTPS),
##        then two cores shared: orchd, nginx, HAProxy and Caddy with 1 and 2 workers each
##        (BENCH_ARGS=--no-two-core without it, BENCH_ARGS=--two-core-only for it alone)
##        and the gateway's checks (bench/auth.py: JWT, API key and rate limit next to none)
bench: $(STAMP) bench-deps
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/auth.py $(filter --quick,$(BENCH_ARGS))

## bench-reload: ~1,000 req/s for 60 s while the config is rewritten 30 times, 10 SIGHUPs and
##               3 orchctl restarts: requests, non-2xx, socket errors, p99 during vs without
bench-reload: $(STAMP)
	$(BIN)/python bench/reload/run.py $(RELOAD_ARGS)

## bench-propagation: time from a registration's 201 on one orchd to its first routed request on another (shared etcd)
bench-propagation: $(STAMP) sysdeps
	$(BIN)/python bench/propagation.py --count 200

## bench-health: event loop lag (p99) and CPU share of orchd with 1,000 endpoints checked every second for 60 s
bench-health: $(STAMP)
	$(BIN)/python bench/health_checks.py --endpoints 1000 --duration 60

## bench-metrics: proxy throughput and CPU per request with server.metrics on vs off (needs wrk, nginx)
bench-metrics: $(STAMP) bench-deps
	$(BIN)/python bench/metrics_cost.py

## bench-syscalls: system calls per proxied request, orchd next to nginx, counted by perf and
##                 strace (GET ~100 B, POST, 64 KiB, 1 MiB; wrk -c64, keep-alive)
bench-syscalls: $(STAMP) bench-deps
	$(BIN)/python bench/syscalls.py $(SYSCALLS_ARGS)

## soak: 10 minutes of mixed traffic, registrations and reloads; RSS and fds at start and end (SOAK_SECONDS=60 for a short run)
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python bench/soak/soak.py --duration $(SOAK_SECONDS)
