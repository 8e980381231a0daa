"""orchctl against a real orchd over its real control socket: every command, human and
--json output, and each exit code (0 ok, 1 refused, 2 usage, 3 not reachable)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, Orchd, base_config, free_port, short_tmpdir, wait_until


def orchctl(*args: str, sock: Path | str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed orchctl; from ``cwd``, as an operator runs it: the script (``python -m``
    would put the working directory on its module path)."""
    cmd = ([str(Path(sys.executable).parent / "orchctl")] if cwd is not None
           else [sys.executable, "-m", "orchctl"])
    if sock is not None:
        cmd += ["--socket", str(sock)]
    full_env = {**os.environ, **(env or {})}
    if "ORCHCTL_SOCKET" not in (env or {}):
        full_env.pop("ORCHCTL_SOCKET", None)
    full_env.pop("CONFIG_PATH", None)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=full_env,
                          cwd=str(cwd or ROOT), timeout=timeout)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """orchctl's entry point in this process (no interpreter start-up per call), against the
    real daemon over its real socket; ``orchctl()`` runs the installed entry point instead."""
    from orchctl.main import main

    monkeypatch.delenv("ORCHCTL_SOCKET", raising=False)
    monkeypatch.delenv("CONFIG_PATH", raising=False)

    def run(*args: str, sock: Path | str | None = None,
            env: dict[str, str] | None = None) -> Result:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        argv = [*(["--socket", str(sock)] if sock is not None else []), *args]
        try:
            code = main(argv)
        finally:
            for key in env or {}:
                monkeypatch.delenv(key, raising=False)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def as_json(proc: Any) -> Any:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


ECHO = {"name": "echo", "urls": ["http://127.0.0.1:9/api", "http://127.0.0.2:9/api"],
        "methods": ["GET", "POST"]}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Orchd]:
    d = Orchd(base_config(ECHO))
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


# ------------------------------------------------------------------ exit codes 3 and 2


def test_no_daemon_exits_3_naming_the_socket(cli: Cli) -> None:
    path = short_tmpdir() / "absent.sock"
    proc = orchctl("status", sock=path)  # the installed entry point, in its own process
    assert proc.returncode == 3
    assert str(path) in proc.stderr
    assert "no such socket" in proc.stderr


def test_stale_socket_exits_3_connection_refused(cli: Cli) -> None:
    path = short_tmpdir() / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening: connect() is refused
    s.close()
    proc = cli("endpoints", "list", sock=path)
    assert proc.returncode == 3
    assert str(path) in proc.stderr
    assert "connection refused" in proc.stderr
    assert "no such socket" not in proc.stderr


def test_a_path_that_is_not_a_socket_is_named_so(cli: Cli) -> None:
    for path in (Path("/etc/passwd"), short_tmpdir()):
        proc = cli("status", sock=path)
        assert proc.returncode == 3
        assert f"{path}: not a socket" in proc.stderr, proc.stderr
        assert "stale" not in proc.stderr


def test_socket_from_environment(cli: Cli, daemon: Orchd) -> None:
    proc = ok(cli("--json", "status", env={"ORCHCTL_SOCKET": str(daemon.socket)}))
    assert as_json(proc)["system_status"] in ("healthy", "degraded", "unhealthy")
    proc = cli("status", env={"ORCHCTL_SOCKET": str(daemon.dir / "nope.sock")})
    assert proc.returncode == 3 and str(daemon.dir / "nope.sock") in proc.stderr


@pytest.mark.parametrize("args", [
    ("bogus",),
    ("endpoints", "add", "only-a-name"),
    ("breakers", "trip"),
    ("endpoints", "show"),
    ("status", "--no-such-flag"),
    ("endpoints", "add", "x", "http://127.0.0.1:1", "--timeout", "soon"),
])
def test_usage_errors_exit_2(cli: Cli, daemon: Orchd, args: tuple[str, ...]) -> None:
    proc = cli(*args, sock=daemon.socket)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Usage" in proc.stderr or "usage" in proc.stderr


def test_usage_error_of_the_entry_point_exits_2() -> None:
    proc = orchctl("endpoints", "frobnicate")
    assert proc.returncode == 2 and "frobnicate" in proc.stderr


def test_help_lists_every_command(cli: Cli) -> None:
    out = ok(cli("--help")).stdout
    for command in ("start", "stop", "reload", "status", "endpoints", "breakers", "config"):
        assert command in out
    sub = ok(cli("endpoints", "--help")).stdout
    for command in ("list", "show", "add", "remove", "drain", "enable"):
        assert command in sub
    sub = ok(cli("breakers", "--help")).stdout
    for command in ("list", "trip", "reset"):
        assert command in sub
    assert "--install-completion" in ok(cli("--help")).stdout


# ------------------------------------------------------------------ status


def test_status_human_and_json(cli: Cli, daemon: Orchd) -> None:
    out = ok(orchctl("status", sock=daemon.socket)).stdout
    assert "\x1b[" not in out, "no colour codes when piped"
    assert "─" not in out and "━" not in out, "no box drawing when piped"
    rows = [line.split() for line in out.splitlines() if line.startswith("echo ")]
    assert [r[3] for r in rows] == ["http://127.0.0.1:9/api", "http://127.0.0.2:9/api"]
    assert all(r[2] == "none" and r[4] == "active" and r[6] == "closed" and r[7] == "0"
               for r in rows), rows
    assert "last reload: ok" in out
    doc = as_json(ok(cli("--json", "status", sock=daemon.socket)))
    assert doc["last_reload"]["ok"] is True
    assert doc["summary"]["total_endpoints"] >= 1
    echo = next(e for e in doc["endpoints"] if e["endpoint_id"] == "echo")
    assert [t["url"] for t in echo["targets"]] == ECHO["urls"]
    assert {t["in_flight"] for t in echo["targets"]} == {0}


# ------------------------------------------------------------------ endpoints


def test_endpoints_lifecycle(cli: Cli, daemon: Orchd) -> None:
    s = daemon.socket
    out = ok(cli("endpoints", "add", "billing", "http://127.0.0.1:9/v2", "--method", "get",
                     "-m", "POST", "--timeout", "7.5", sock=s)).stdout
    assert "billing" in out and "http://127.0.0.1:9/v2" in out

    listed = ok(cli("endpoints", "list", sock=s)).stdout
    row = next(line.split() for line in listed.splitlines() if line.startswith("billing "))
    assert row[1:5] == ["api", "active", "closed", "GET,POST"]
    doc = as_json(ok(cli("--json", "endpoints", "list", sock=s)))
    entry = next(e for e in doc["endpoints"] if e["endpoint_id"] == "billing")
    assert entry["source"] == "api" and entry["methods"] == ["GET", "POST"]
    assert entry["timeout"] == 7.5
    assert doc["total_count"] >= 2

    after = as_json(ok(cli("endpoints", "list", "--json", "--socket", str(s))))
    assert after["endpoints"] == doc["endpoints"] or after["total_count"] == doc["total_count"]

    shown = ok(cli("endpoints", "show", "billing", sock=s)).stdout
    assert "timeout" in shown and "7.5" in shown and "http://127.0.0.1:9/v2" in shown
    assert as_json(ok(cli("--json", "endpoints", "show", "billing", sock=s)))["source"] == "api"

    drained = as_json(ok(cli("--json", "endpoints", "drain", "billing", sock=s)))
    assert [t["admin_state"] for t in drained["targets"]] == ["draining"]
    assert "draining" in ok(cli("endpoints", "show", "billing", sock=s)).stdout
    out = ok(cli("endpoints", "enable", "billing", "--url", "http://127.0.0.1:9/v2",
                     sock=s)).stdout
    assert "active" in out
    doc = as_json(ok(cli("--json", "endpoints", "show", "billing", sock=s)))
    assert [t["admin_state"] for t in doc["targets"]] == ["active"]

    ok(cli("endpoints", "drain", "echo", "--url", "http://127.0.0.2:9/api", sock=s))
    doc = as_json(ok(cli("--json", "endpoints", "show", "echo", sock=s)))
    assert [t["admin_state"] for t in doc["targets"]] == ["active", "draining"]
    ok(cli("endpoints", "enable", "echo", sock=s))

    removed = as_json(ok(cli("--json", "endpoints", "remove", "billing", sock=s)))
    assert removed["success"] is True
    doc = as_json(ok(cli("--json", "endpoints", "list", sock=s)))
    assert "billing" not in [e["endpoint_id"] for e in doc["endpoints"]]


def test_refusals_exit_1_with_the_daemons_message(cli: Cli, daemon: Orchd) -> None:
    s = daemon.socket
    proc = cli("endpoints", "remove", "echo", sock=s)
    assert proc.returncode == 1
    assert "configuration file" in proc.stderr
    proc = cli("--json", "endpoints", "remove", "echo", sock=s)
    assert proc.returncode == 1 and as_json(proc)["status"] == 409

    proc = cli("endpoints", "add", "echo", "http://127.0.0.1:9", sock=s)
    assert proc.returncode == 1 and "echo" in proc.stderr
    proc = cli("endpoints", "add", "bad", "htp://nowhere", sock=s)
    assert proc.returncode == 1 and "url" in proc.stderr
    proc = cli("endpoints", "show", "ghost", sock=s)
    assert proc.returncode == 1 and "ghost" in proc.stderr
    proc = cli("breakers", "trip", "ghost", sock=s)
    assert proc.returncode == 1 and "ghost" in proc.stderr


# ------------------------------------------------------------------ breakers


def test_breakers_trip_list_reset(cli: Cli, daemon: Orchd) -> None:
    s = daemon.socket
    assert "forced open" in ok(cli("breakers", "trip", "echo", sock=s)).stdout
    out = ok(cli("breakers", "list", sock=s)).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("echo ")]
    assert [r[2] for r in rows] == ["forced_open", "forced_open"]
    doc = as_json(ok(cli("--json", "breakers", "list", sock=s)))
    cb = next(c for c in doc["circuit_breakers"] if c["endpoint_id"] == "echo")
    assert {t["state"] for t in cb["targets"]} == {"forced_open"}
    status = ok(cli("status", sock=s)).stdout
    assert "forced_open" in status

    doc = as_json(ok(cli("--json", "breakers", "reset", "echo", sock=s)))
    assert doc["circuit_breaker"]["state"] == "closed"
    out = ok(cli("breakers", "list", sock=s)).stdout
    assert [line.split()[2] for line in out.splitlines() if line.startswith("echo ")] == [
        "closed", "closed"]


# ------------------------------------------------------------------ reload and config check


def test_reload_prints_the_diff_or_the_errors(cli: Cli, daemon: Orchd) -> None:
    # orchd also watches the file, so the diff may already have been applied by the time
    # orchctl asks: the endpoint is there either way, and the answer is a diff.
    s = daemon.socket
    extra = {"name": "added_one", "url": "http://127.0.0.1:9/x"}
    daemon.write_config(base_config(ECHO, extra))
    out = ok(cli("reload", sock=s)).stdout
    assert out.startswith(("added: added_one\nreloaded: 1 added", "reloaded: 0 added")), out
    doc = as_json(ok(cli("--json", "endpoints", "show", "added_one", sock=s)))
    assert doc["source"] == "config"
    daemon.write_config(base_config(ECHO))
    doc = as_json(ok(cli("--json", "reload", sock=s)))
    assert doc["ok"] is True and doc["removed"] in ([], ["added_one"])
    assert set(doc) >= {"added", "changed", "removed", "unchanged", "restart_required"}
    assert cli("endpoints", "show", "added_one", sock=s).returncode == 1

    daemon.write_config("endpoints:\n  - name: echo\n    url: htp://x\n    colour: red\n")
    proc = cli("reload", sock=s)
    assert proc.returncode == 1
    assert "endpoints[0].url (line 3)" in proc.stderr
    assert "endpoints[0].colour (line 4)" in proc.stderr
    proc = cli("--json", "reload", sock=s)
    assert proc.returncode == 1
    assert {e["path"] for e in as_json(proc)["errors"]} == {"endpoints[0].url",
                                                             "endpoints[0].colour"}
    assert "echo" in ok(cli("status", sock=s)).stdout, "the running configuration stays"
    daemon.write_config(base_config(ECHO))
    ok(cli("reload", sock=s))


def test_config_check_offline(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base_config(ECHO)))
    out = ok(cli("config", "check", str(good), sock=tmp_path / "no.sock")).stdout
    assert "is valid (1 endpoint)" in out
    assert as_json(ok(cli("--json", "config", "check", str(good))))["valid"] is True
    ok(cli("config", "check", env={"CONFIG_PATH": str(good)}))

    bad = tmp_path / "bad.yaml"
    bad.write_text("log_level: LOUD\nendpoints:\n  - name: a\n    url: ftp://x\n"
                   "  - name: a\n    url: http://x\n")
    proc = cli("config", "check", str(bad))
    assert proc.returncode == 1
    assert "log_level (line 1)" in proc.stderr
    assert "endpoints[0].url (line 4)" in proc.stderr
    assert "endpoints[1].name" in proc.stderr
    proc = cli("--json", "config", "check", str(bad))
    assert proc.returncode == 1
    doc = as_json(proc)
    assert doc["valid"] is False and len(doc["errors"]) >= 3
    assert cli("config", "check", str(tmp_path / "missing.yaml")).returncode == 1


# ------------------------------------------------------------------ start and stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_start_status_stop(cli: Cli) -> None:
    work = short_tmpdir()
    sock = work / "orchd.sock"
    cfg = work / "orchestrator.yaml"
    port = free_port()
    cfg.write_text(yaml.safe_dump(base_config(
        ECHO, server={"host": "127.0.0.1", "port": port, "state_dir": str(work / "state")})))
    pid = None
    try:
        # start runs as its own process: the orchd it spawns must outlive it.
        proc = ok(orchctl("start", "--config", str(cfg), "--log-file", str(work / "o.log"),
                          sock=sock))
        pid = int(proc.stdout.strip())
        assert _alive(pid)
        assert str(sock) in proc.stderr
        assert (work / "o.log").exists()

        again = cli("start", "--config", str(cfg), sock=sock)
        assert again.returncode == 1
        assert "already running" in again.stderr and str(pid) in again.stderr

        info = as_json(ok(cli("--json", "status", sock=sock)))
        assert info["last_reload"]["trigger"] == "start"

        out = ok(cli("stop", sock=sock)).stdout
        assert f"pid {pid}" in out
        assert not _alive(pid)
        assert not sock.exists(), "the socket is removed on exit"
        assert cli("status", sock=sock).returncode == 3

        proc = ok(orchctl("--json", "start", "-c", str(cfg), sock=sock))
        pid = as_json(proc)["pid"]
        assert _alive(pid)
        stopped = as_json(ok(cli("--json", "stop", sock=sock)))
        assert stopped["pid"] == pid and not _alive(pid)
    finally:
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_start_runs_nothing_from_the_working_directory(cli: Cli) -> None:
    """orchctl start runs orchd with ``python -m``, which puts the working directory first on
    the module path: a module there named like one orchd imports ran inside orchd."""
    work = short_tmpdir()
    cwd = work / "cwd"
    cwd.mkdir()
    marker = work / "imported"
    (cwd / "aiohttp.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    sock = work / "orchd.sock"
    cfg = work / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump(base_config(
        ECHO, server={"port": free_port(), "state_dir": str(work / "state")})))
    pid = None
    try:
        proc = orchctl("start", "--config", str(cfg), "--log-file", str(work / "o.log"),
                       sock=sock, cwd=cwd)
        assert not marker.exists(), "a module in the working directory was imported"
        pid = int(ok(proc).stdout.strip())
        assert f"pid {pid}" in ok(cli("stop", sock=sock)).stdout
    finally:
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_start_reports_an_invalid_config_and_a_failed_start(cli: Cli) -> None:
    work = short_tmpdir()
    try:
        cfg = work / "bad.yaml"
        cfg.write_text("endpoints:\n  - name: a\n    url: nope\n")
        proc = cli("start", "-c", str(cfg), sock=work / "s.sock")
        assert proc.returncode == 1
        assert "endpoints[0].url (line 3)" in proc.stderr
        assert not (work / "s.sock").exists()

        # The port is taken: orchd exits 3 while starting and orchctl shows its log.
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cfg.write_text(yaml.safe_dump(base_config(
            server={"port": port, "state_dir": str(work / "state")})))
        try:
            proc = cli("start", "-c", str(cfg), sock=work / "s.sock")
        finally:
            blocker.close()
        assert proc.returncode == 1
        assert "exited with status 3" in proc.stderr
        assert f"127.0.0.1:{port}" in proc.stderr
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_stop_waits_for_a_graceful_exit(cli: Cli) -> None:
    d = Orchd(base_config(ECHO))
    try:
        d.start()
        assert d.proc is not None
        out = ok(cli("stop", sock=d.socket)).stdout
        assert f"pid {d.proc.pid}" in out
        wait_until(lambda: d.proc is not None and d.proc.poll() is not None, 5,
                   what="orchd to have exited")
        assert d.proc.returncode == 0
        assert not d.socket.exists()
    finally:
        d.cleanup()


def test_shell_completion_offers_commands_and_live_endpoint_names(daemon: Orchd) -> None:
    def complete(words: str, cword: int) -> list[str]:
        proc = orchctl(env={"_ORCHCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
                            "COMP_CWORD": str(cword), "ORCHCTL_SOCKET": str(daemon.socket)})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("orchctl end", 1) == ["endpoints"]
    assert complete("orchctl breakers trip ec", 3) == ["echo"]
