"""systemd integration: sd_notify (READY/RELOADING/STOPPING), socket activation (LISTEN_FDS),
and the unit files as installed by ``make install``, checked by ``systemd-analyze verify``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import IN_CI, ROOT, Orchd, base_config, short_tmpdir

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


class NotifySocket:
    """The service manager's end of sd_notify: a datagram socket that collects messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.extend(data.split("\n"))
            if field in data.split("\n"):
                return self.messages
        raise AssertionError(f"no {field} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_ready_reloading_stopping() -> None:
    work = short_tmpdir()
    notify = NotifySocket(work / "notify.sock")
    daemon = Orchd(base_config(), workdir=work, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        daemon.start(wait=False)
        notify.wait_for("READY=1")
        assert f"MAINPID={daemon.proc.pid}" in notify.messages
        daemon.wait_ready()

        daemon.signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        ready_again = notify.wait_for("READY=1")
        assert ready_again.count("READY=1") == 2

        daemon.signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert daemon.proc.wait(20) == 0
        order = [m for m in notify.messages if m in ("READY=1", "RELOADING=1", "STOPPING=1")]
        assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], notify.messages
    finally:
        notify.close()
        daemon.cleanup()


_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""


class ActivatedOrchd(Orchd):
    """orchd started the way systemd starts it for orchd.socket: the listening socket is fd 3,
    LISTEN_FDS=1, and LISTEN_PID is the pid of the orchd process itself."""

    def __init__(self, listener: socket.socket, **kw: object) -> None:
        super().__init__(base_config(), port=listener.getsockname()[1], **kw)  # type: ignore[arg-type]
        self.listener = listener

    def start(self, wait: bool = True, timeout: float = 20.0) -> ActivatedOrchd:
        fd = self.listener.fileno()
        # The wrapper puts the socket on fd 3 and sets LISTEN_PID to its own pid, which
        # exec keeps, as systemd does between fork and exec.
        wrapper = [sys.executable, "-c", _ACTIVATE, str(fd), *self.command()]
        env = {**os.environ, **self.env}
        env.pop("CONFIG_PATH", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(wrapper, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(ROOT), start_new_session=True,
                                     pass_fds=(fd,))
        if wait:
            self.wait_ready(timeout)
        return self


def test_socket_activation_serves_on_the_inherited_socket() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    daemon = ActivatedOrchd(listener)
    try:
        # orchd is also told --port <the same port>: binding it itself would fail (we hold it),
        # so a ready answer on this port proves it serves on the inherited socket.
        daemon.start()
        with urllib.request.urlopen(f"{daemon.url}/health", timeout=5) as r:
            assert r.status == 200
        assert "inherited socket" in daemon.log()
    finally:
        daemon.cleanup()
        listener.close()


def test_listen_fds_for_another_pid_are_ignored(orchd_factory) -> None:
    daemon = orchd_factory(base_config(), env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    with urllib.request.urlopen(f"{daemon.url}/health", timeout=5) as r:
        assert r.status == 200
    assert "inherited socket" not in daemon.log()


# ------------------------------------------------------------- unit files and make install


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make install DESTDIR=... PREFIX=/usr`` of this tree (the package without its
    dependencies, which the test environment already has)."""
    dest = tmp_path_factory.mktemp("destdir")
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "install", f"DESTDIR={dest}", "PREFIX=/usr",
         f"PYTHON={sys.executable}", "PIP_INSTALL_FLAGS=--no-deps"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def test_make_install_honours_destdir_and_prefix(installed: Path) -> None:
    expected = [
        "usr/bin/orchd", "usr/bin/orchctl",
        "usr/lib/systemd/system/orchd.service", "usr/lib/systemd/system/orchd.socket",
        "usr/lib/sysusers.d/orchd.conf",
        "usr/share/man/man8/orchd.8", "usr/share/man/man1/orchctl.1",
        "usr/share/man/man5/orchestrator.yaml.5",
        "etc/orchd/orchestrator.yaml", "usr/share/doc/orchd/orchestrator.yaml.example",
    ]
    for rel in expected:
        assert (installed / rel).is_file(), rel
    assert not list(installed.glob("usr/local/**/orchd")), "PREFIX=/usr, not /usr/local"
    unit = (installed / "usr/lib/systemd/system/orchd.service").read_text()
    assert "ExecStart=/usr/bin/orchd --config /etc/orchd/orchestrator.yaml" in unit
    site = next(installed.glob("usr/lib/python3*/site-packages"))
    assert (site / "orchd" / "schema" / "config.schema.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}
    for name in ("orchd", "orchctl"):
        version = subprocess.run([str(installed / "usr/bin" / name), "--version"], env=env,
                                 cwd=installed, capture_output=True, text=True, timeout=60,
                                 check=False)
        assert version.returncode == 0 and "1.0.0" in version.stdout, version


def _analyze() -> str:
    if SYSTEMD_ANALYZE is None:
        if IN_CI:
            pytest.fail("systemd-analyze is missing (package systemd, scripts/system-deps.sh)")
        pytest.skip("systemd-analyze is not installed")
    return SYSTEMD_ANALYZE


def test_units_pass_systemd_analyze_verify(installed: Path) -> None:
    analyze = _analyze()
    units = short_tmpdir()
    try:
        # verify checks that ExecStart exists: point it at the binary inside DESTDIR.
        service = (installed / "usr/lib/systemd/system/orchd.service").read_text()
        (units / "orchd.service").write_text(
            service.replace("ExecStart=/usr/bin/orchd", f"ExecStart={installed}/usr/bin/orchd"))
        shutil.copy(installed / "usr/lib/systemd/system/orchd.socket", units / "orchd.socket")
        proc = subprocess.run([analyze, "verify", "--man=no", "orchd.service", "orchd.socket"],
                              cwd=units, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr

        security = subprocess.run([analyze, "security", "--offline=true", "orchd.service"],
                                  cwd=units, capture_output=True, text=True, timeout=60,
                                  check=False)
        match = re.search(r"Overall exposure level for orchd\.service: ([0-9.]+)",
                          security.stdout + security.stderr)
        if match is None:
            pytest.skip("this systemd-analyze has no offline security check")
        assert float(match.group(1)) <= 2.0, security.stdout
    finally:
        shutil.rmtree(units, ignore_errors=True)


def test_unit_contract() -> None:
    service = (ROOT / "systemd/orchd.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "RuntimeDirectory=orchd",
                 "StateDirectory=orchd", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "User=orchd"):
        assert line in service, line
    socket_unit = (ROOT / "systemd/orchd.socket").read_text()
    assert re.search(r"^ListenStream=\S+:8000$", socket_unit, re.M)
    assert "Service=orchd.service" in socket_unit
