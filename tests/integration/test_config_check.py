"""``orchd --check`` and how the file, the environment and the flags combine at start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import ROOT, Orchd, base_config, free_port, get_json, short_tmpdir


def orchd(*args: str, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if k not in ("CONFIG_PATH", "HOST", "PORT", "LOG_LEVEL")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "orchd", *args], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=60)


def write(tmp_path: Path, text: str, name: str = "orchestrator.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def test_shipped_example_config_is_valid() -> None:
    proc = orchd("--check", "--config", "etc/orchestrator.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "etc/orchestrator.yaml is valid" in proc.stdout


def test_documented_example_configs_are_valid() -> None:
    examples = sorted((ROOT / "docs" / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for path in examples:
        proc = orchd("--check", "-c", str(path), env={"ORCH_ADMIN_TOKEN": "t"})
        assert proc.returncode == 0, (path, proc.stderr)


def test_main_py_check() -> None:
    proc = subprocess.run([sys.executable, "main.py", "--check", "-c", "etc/orchestrator.yaml"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout


def test_check_lists_every_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
        server:
          port: 8000
          bogus: 1
        endpoints:
          - name: a
            url: http://127.0.0.1:9001/x
          - name: b
            url: htp://x
          - name: a
            url: http://127.0.0.1:9002
        health_check:
          interval: -1
    """)
    proc = orchd("--check", "--config", path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"orchd: configuration invalid: {path}"
    errors = [line.strip() for line in lines[1:]]
    assert "endpoints[1].url (line 8): 'htp://x' is not an http(s) URL " \
           "(scheme://host[:port][/path])" in errors
    assert any(e.startswith("server.bogus (line 3): unknown key 'bogus'") for e in errors)
    assert "endpoints[2].name (line 9): duplicate endpoint name 'a' (first at endpoints[0])" \
        in errors
    assert any(e.startswith("health_check.interval (line 12):") for e in errors)
    assert len(errors) == 4


def test_check_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        log_level: INFO
        endpoints:
          - name: a
            url: "http://127.0.0.1:1
          - name: b
    """)
    proc = orchd("--check", "-c", path)
    assert proc.returncode == 1
    assert "YAML syntax error" in proc.stderr
    assert "(line " in proc.stderr


def test_check_missing_file() -> None:
    proc = orchd("--check", "--config", "/nonexistent/orchestrator.yaml")
    assert proc.returncode == 1
    assert "cannot read the file" in proc.stderr


def test_legacy_keys_accepted_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path, """
        endpoints:
          - name: a
            url: http://127.0.0.1:9001
            description: user service
        circuit_breaker:
          failure_threshold: 5
          fallback_strategy: cached
        metrics:
          enabled: true
          port: 9090
        log_level: info
    """)
    proc = orchd("--check", "--config", path)
    assert proc.returncode == 0, proc.stderr
    assert "endpoints[0].description (line 4): is ignored" in proc.stderr
    assert "circuit_breaker.fallback_strategy (line 7)" in proc.stderr
    assert "metrics (line 8)" in proc.stderr


def test_legacy_keys_warned_at_start(orchd_factory: Callable[..., Orchd]) -> None:
    text = textwrap.dedent("""
        health_check: {enabled: false}
        endpoints:
          - name: a
            url: http://127.0.0.1:9001
            description: user service
        circuit_breaker:
          fallback_strategy: cached
        metrics:
          enabled: true
    """).lstrip("\n")
    gw = orchd_factory(text)
    log = gw.log()
    assert "endpoints[0].description (line 5): is ignored" in log
    assert "circuit_breaker.fallback_strategy (line 7): is ignored" in log
    assert "metrics (line 8): is ignored" in log


def test_original_config_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, """
        endpoints:
          - name: user_service
            url: http://localhost:8001/api/v1
            version: v1
            methods: [GET, POST, PUT, DELETE]
            auth_type: bearer
            timeout: 30
            retries: 3
            health_check_path: /health
          - name: order_service
            url: http://localhost:8002
            methods: [GET, POST]
        health_check:
          enabled: true
          interval: 30
          timeout: 10
          healthy_threshold: 2
          unhealthy_threshold: 3
        circuit_breaker:
          failure_threshold: 5
          reset_timeout: 60
          half_open_max_calls: 3
        log_level: INFO
    """)
    proc = orchd("--check", "--config", path)
    assert proc.returncode == 0, proc.stderr
    assert "(2 endpoints)" in proc.stdout
    assert proc.stderr == ""


def test_env_expansion_in_check(tmp_path: Path) -> None:
    path = write(tmp_path, """
        server:
          admin_token: ${ORCH_TEST_TOKEN}
        endpoints:
          - name: a
            url: ${ORCH_TEST_URL:-http://127.0.0.1:9001}
    """)
    assert orchd("--check", "-c", path, env={"ORCH_TEST_TOKEN": "t"}).returncode == 0
    proc = orchd("--check", "-c", path)
    assert proc.returncode == 1
    assert "server.admin_token (line 2): environment variable ORCH_TEST_TOKEN is not set" \
        in proc.stderr
    proc = orchd("--check", "-c", path, env={"ORCH_TEST_TOKEN": "t", "ORCH_TEST_URL": "htp://x"})
    assert proc.returncode == 1
    assert "endpoints[0].url (line 5): 'htp://x' is not an http(s) URL" in proc.stderr


def test_config_path_env_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, "endpoints: []\nlog_level: INFO\n")
    proc = orchd("--check", env={"CONFIG_PATH": path}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert path in proc.stdout
    bad = write(tmp_path, "nope: 1\n", "bad.yaml")
    proc = orchd("--check", env={"CONFIG_PATH": bad}, cwd=tmp_path)
    assert proc.returncode == 1
    # the flag wins over CONFIG_PATH
    assert orchd("--check", "-c", path, env={"CONFIG_PATH": bad}).returncode == 0


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert orchd("--bogus-flag").returncode == 2
    assert orchd("--port", "99999", "--check").returncode == 2
    proc = orchd("--check", "-c", "etc/orchestrator.yaml", env={"PORT": "http"})
    assert proc.returncode == 1
    assert "PORT" in proc.stderr


def test_version_flag() -> None:
    proc = orchd("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("orchd ")


def _command(gw: Orchd, *flags: str, env: dict[str, str] | None = None) -> list[str]:
    """orchd with only the given flags (and env set through env(1), which Orchd keeps)."""
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())]
    return [*prefix, sys.executable, "-m", "orchd", "--state-dir", str(gw.state_dir),
            "--control-socket", str(gw.socket), *flags]


async def test_env_overrides_the_file() -> None:
    file_port, env_port = free_port(), free_port()
    # The file's address cannot be bound here: the daemon starts only if HOST/PORT win.
    config = base_config(server={"host": "192.0.2.1", "port": file_port}, log_level="INFO")
    gw = Orchd(config, port=env_port)
    env = {"HOST": "127.0.0.1", "PORT": str(env_port), "LOG_LEVEL": "error"}
    gw.command = lambda: _command(gw, "--config", str(gw.config_path),  # type: ignore[method-assign]
                                  env=env)
    try:
        gw.start()
        async with aiohttp.ClientSession() as http:
            status, body = await get_json(http, f"http://127.0.0.1:{env_port}/health")
        assert status == 200 and body["status"] == "healthy"
        # LOG_LEVEL=error beat log_level: INFO: neither the INFO "ready" line nor the
        # WARNING about the missing admin token was written.
        assert " INFO " not in gw.log() and " WARNING " not in gw.log()
    finally:
        gw.cleanup()


async def test_flags_override_env_and_file() -> None:
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = base_config(server={"host": "192.0.2.1", "port": file_port}, log_level="INFO")
    gw = Orchd(config, port=flag_port)
    env = {"HOST": "192.0.2.2", "PORT": str(env_port), "LOG_LEVEL": "error"}
    gw.command = lambda: _command(  # type: ignore[method-assign]
        gw, "--config", str(gw.config_path), "--host", "127.0.0.1", "--port", str(flag_port),
        "--log-level", "warning", env=env)
    try:
        gw.start()
        async with aiohttp.ClientSession() as http:
            status, _ = await get_json(http, f"{gw.url}/health/ready")
        assert status == 200
        log = gw.log()
        assert " WARNING " in log and "admin_token" in log
        assert " INFO " not in log
    finally:
        gw.cleanup()


async def test_config_path_env_starts_the_daemon() -> None:
    workdir = short_tmpdir()
    port = free_port()
    cfg = workdir / "elsewhere.yaml"
    cfg.write_text("health_check: {enabled: false}\n"
                   "endpoints:\n  - name: only_here\n    url: http://127.0.0.1:1\n")
    gw = Orchd(base_config(), workdir=workdir, port=port)
    gw.command = lambda: _command(gw, "--port", str(port),  # type: ignore[method-assign]
                                  env={"CONFIG_PATH": str(cfg)})
    try:
        gw.start()
        async with aiohttp.ClientSession() as http:
            status, body = await get_json(http, f"{gw.url}/registry/endpoints")
        assert status == 200
        assert [e["endpoint_id"] for e in body["endpoints"]] == ["only_here"]
    finally:
        gw.cleanup()


def test_an_unusable_path_is_one_line_and_exit_3(tmp_path: Path) -> None:
    # No traceback, said once (the log goes to stderr), exit 3 as orchd(8) says.
    config = write(tmp_path, "endpoints: []\n")
    for flags in (["--state-dir", "/proc/1/orchd-state"],
                  ["--state-dir", str(tmp_path / "state"),
                   "--control-socket", "/proc/1/orchd/orchd.sock"]):
        proc = orchd("--config", config, "--port", str(free_port()), *flags)
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("cannot start") == 1, proc.stderr


def test_a_user_without_root_is_told_what_to_pass(monkeypatch: Any) -> None:
    from orchd import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    hint = cli._unprivileged_hint("state directory /var/lib/orchd: Permission denied")
    assert "--state-dir" in hint and "--control-socket" in hint
    assert cli._unprivileged_hint("state directory /x: No such file or directory") == ""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli._unprivileged_hint("state directory /x: Permission denied") == ""
