"""orchd under systemd for real: a Debian root with systemd (mkroot.sh, cached) seen through
an overlay, orchd installed into it with ``make install`` from this checkout, booted with
``systemd-nspawn -b`` on a private network (its own loopback). Inside, the one-shot unit
orchd-deploy-check.service runs check-systemd.sh and powers the system off; its results
come back through a bound directory, one line per check.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.roots import CACHE, HERE, cached_root, overlay, require, run
from tests.support import ROOT, short_tmpdir, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BOOT_DEADLINE = 360  # seconds from boot to the checks' last line
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NSPAWN = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit"]


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as they are now (tracked and new, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    dest.mkdir(parents=True)
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _install(root: Path) -> None:
    _copy_checkout(root / "usr/src/orchd")
    pip_cache = CACHE / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    cmd = [*NSPAWN, "--pipe", "-D", str(root), f"--bind={pip_cache}:/root/.cache/pip"]
    if CA_BUNDLE.exists():  # pip trusts what this machine trusts (a TLS-intercepting proxy)
        cmd += [f"--bind-ro={CA_BUNDLE}:/run/host-ca.crt", "-E", "PIP_CERT=/run/host-ca.crt"]
    run([*cmd, "/usr/src/orchd/tests/deploy/install.sh", "/usr/src/orchd"], timeout=600)
    lib = root / "usr/local/lib/orchd-deploy"
    lib.mkdir(parents=True)
    shutil.copy2(HERE / "check-systemd.sh", lib / "check-systemd.sh")
    units = root / "etc/systemd/system"
    shutil.copy2(HERE / "orchd-deploy-check.service", units / "orchd-deploy-check.service")
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / "orchd-deploy-check.service").symlink_to("../orchd-deploy-check.service")


def _results(out: Path) -> list[str]:
    path = out / "results"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def booted() -> dict[str, str]:
    """Boot the system once; every check's verdict by name, plus the evidence files."""
    require("mmdebstrap", "systemd-nspawn")
    lower = cached_root("systemd")
    work = short_tmpdir()
    out = work / "results"
    out.mkdir()
    try:
        with overlay(lower, work) as root:
            _install(root)
            console = (work / "console.log").open("wb")
            boot = subprocess.Popen(
                [*NSPAWN, "-b", "-D", str(root), "--private-network", "--console=pipe",
                 f"--bind={out}:/orchd-results"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True)
            try:
                started = time.monotonic()
                wait_until(lambda: "DONE" in _results(out) or boot.poll() is not None,
                           timeout=BOOT_DEADLINE, interval=0.5, what="the checks to finish")
                elapsed = time.monotonic() - started
                boot.wait(60)  # the check unit powers the system off
            finally:
                if boot.poll() is None:  # nspawn turns SIGTERM into a clean poweroff
                    boot.send_signal(signal.SIGTERM)
                    try:
                        boot.wait(30)
                    except subprocess.TimeoutExpired:
                        boot.kill()
                        boot.wait(10)
                console.close()
        lines = _results(out)
        artifacts = ROOT / "test-artifacts" / "deploy-systemd"
        shutil.rmtree(artifacts, ignore_errors=True)
        shutil.copytree(out, artifacts)
        shutil.copy2(work / "console.log", artifacts / "console.log")
        evidence = {p.name: p.read_text(errors="replace") for p in out.iterdir() if p.is_file()}
        report = "\n".join([*lines, f"boot to last check: {elapsed:.0f}s", "",
                            evidence.get("status.txt", ""), evidence.get("security.txt", "")])
        (CACHE / "report-systemd.txt").write_text(report)
        assert "DONE" in lines, ("the checks did not finish:\n" + "\n".join(lines) + "\n"
                                 + (work / "console.log").read_text(errors="replace")[-4000:])
        verdicts = {}
        for line in lines[:-1]:
            verdict, _, rest = line.partition(" ")
            name, _, detail = rest.partition(": ")
            verdicts[name] = f"{verdict} {detail}"
        verdicts.update({f"file:{k}": v for k, v in evidence.items()})
        return verdicts
    finally:
        shutil.rmtree(work, ignore_errors=True)


CHECKS = {
    "start": "systemctl start orchd returns once orchd said READY=1 (Type=notify)",
    "active": "the service is active",
    "notify-type": "Type=notify",
    "health-after-start": "GET /health answers",
    "proxied-after-start": "a proxied request to the local upstream answers",
    "status-text": "STATUS= from orchd is the unit's StatusText",
    "runs-as-orchd": "the main process runs as the user orchd",
    "control-socket-0660": "the control socket is 0660, owned by orchd",
    "orchctl-status": "orchctl status works as root",
    "reload-command": "systemctl reload returns 0",
    "reload-applied": "the edited file is in force",
    "reload-same-pid": "a reload keeps the main process",
    "reloading-notified": "orchd sent RELOADING=1 (the journal of PID 1, debug level)",
    "ready-after-reload": "READY=1 after the reload: active, StatusText serving",
    "systemctl-restart": "systemctl restart returns 0",
    "restart-new-mainpid": "a new main process",
    "restart-active": "active after the restart",
    "health-after-restart": "serving after the restart",
    "orchctl-restart": "orchctl restart exits 0",
    "orchctl-restart-old-exits": "the old process exits after the handover",
    "orchctl-restart-no-failed-request": "no request failed during orchctl restart",
    "mainpid-follows": "MAINPID is the successor",
    "mainpid-is-orchd": "the successor is orchd",
    "mainpid-child-of-systemd": "the successor is systemd's child (orphaned by the launcher)",
    "mainpid-not-alien": "systemd did not call the main process 'not our child'",
    "handover-active": "still active, not restarted by systemd",
    "handover-reload": "systemctl reload reaches the successor",
    "handover-healthy": "the successor serves",
    "journal-has-logs": "journalctl -u orchd shows orchd's log",
    "systemctl-stop": "systemctl stop returns 0",
    "stop-clean": "the stop is a clean exit 0 (Result=success)",
    "stop-drained": "orchd drained on SIGTERM",
    "stop-socket-removed": "the control socket is gone",
    "socket-start": "orchd.socket starts",
    "socket-listening": "orchd.socket is active",
    "service-not-started": "orchd.service waits for the first connection",
    "first-request-starts": "the first request starts orchd and is answered",
    "activated-service-active": "orchd.service is active",
    "serves-inherited-socket": "orchd serves on the socket systemd passed",
    "socket-systemctl-restart": "systemctl restart with orchd.socket",
    "socket-restart-no-failed-request": "no request failed: the kernel queued them",
    "socket-orchctl-restart": "orchctl restart of a socket-activated orchd",
    "socket-old-exits": "the old process exits",
    "socket-orchctl-restart-no-failed-request": "no request failed during the handover",
    "socket-mainpid-follows": "MAINPID follows",
    "socket-stop": "systemctl stop orchd.socket orchd",
    "socket-stop-clean": "a clean exit 0 after the handover too",
    "security-exposure": "systemd-analyze security orchd: exposure at most 2.0",
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_under_systemd(booted: dict[str, str], check: str) -> None:
    verdict = booted.get(check, "MISSING (the check script did not get there)")
    assert verdict.startswith("PASS"), f"{CHECKS[check]}: {verdict}"
