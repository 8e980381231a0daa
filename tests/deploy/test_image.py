"""The container image: the project's Dockerfile built with buildah on a Debian base made
offline (mmdebstrap, ``podman import``), then orchd run from it the way a container engine
runs it: the image's entrypoint, command, user and environment, the state volume mounted,
the host's network (loopback, an ephemeral port).

No OCI runtime can run here (it cannot set rlimits), so the image runs with ``buildah run
--isolation chroot``: a chroot without a PID namespace, where ``docker stop`` becomes the
image's stop signal sent to its entrypoint process (tini).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.roots import CACHE, STORAGE, cached_root, require, run
from tests.support import ROOT, free_port, short_tmpdir, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE = "localhost/orchd-test-base"
IMAGE = "localhost/orchd-test:current"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def buildah(*args: str, timeout: float = 120) -> str:
    return run(["buildah", *STORAGE, *args], timeout=timeout).stdout.strip()


def _base_image() -> str:
    """The Debian base, imported into the tests' storage once per root file system."""
    tar = cached_root("image")
    tag = f"{BASE}:{tar.stem.split('-', 1)[1]}"
    names = buildah("images", "--format", "{{.Name}}:{{.Tag}}").split()
    for stale in (n for n in names if n.startswith(BASE + ":") and n != tag):
        buildah("rmi", stale)
    if tag not in names:
        run(["podman", *STORAGE, "import", str(tar), tag], timeout=300)
    return tag


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    """The image built from the checkout's Dockerfile; yields its Docker config. Its layers
    stay in the tests' storage as the build cache; older builds' layers are pruned."""
    require("buildah", "podman", "mmdebstrap")
    base = _base_image()
    cmd = ["bud", "--isolation", "chroot", "--layers", "--force-rm", "--format", "docker",
           "--build-arg", f"BASE={base}", "-t", IMAGE, "-f", str(ROOT / "Dockerfile")]
    if CA_BUNDLE.exists():  # pip trusts what this machine trusts (a TLS-intercepting proxy)
        cmd += ["-v", f"{CA_BUNDLE}:/run/ca.crt:ro", "--build-arg", "PIP_CERT=/run/ca.crt"]
    started = time.monotonic()
    buildah(*cmd, str(ROOT), timeout=840)
    built = time.monotonic() - started
    subprocess.run(["buildah", *STORAGE, "rmi", "--prune"], capture_output=True, timeout=120,
                   check=False)
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))["Docker"]["config"]
    size = buildah("images", "--format", "{{.Size}}", IMAGE)
    (CACHE / "report-image.txt").write_text(f"{IMAGE}: {size}, built in {built:.0f}s\n")
    yield config


class Container:
    """One container from the image (``docker run``): its own writable layer, the state and
    runtime directories mounted from the host, the host's network."""

    def __init__(self, config: dict[str, Any], state: Path, rundir: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.mounts = ["-v", f"{state}:/var/lib/orchd", "-v", f"{rundir}:/run/orchd"]
        self.state, self.rundir = state, rundir
        # tini is not process 1 here (no PID namespace): it must still reap orchd's children.
        self.env = ["-e", f"PORT={port}", "-e", "TINI_SUBREAPER=1"]
        self.name = buildah("from", "--pull-never", IMAGE)
        self.log = rundir.parent / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Container:
        # `buildah run --isolation chroot` now and then starts the command without its bind
        # mounts in place (seen here about one start in ten): orchd then writes its state into
        # the container's own layer, and what the volume promises cannot be checked. A start
        # counts only once orchd sees the host's directories (``_unmounted``); otherwise the
        # working container is replaced and started again (at most 5 tries, each logged with
        # what was seen).
        why = ""
        for attempt in range(1, 6):
            self._run()
            why = self._unmounted()
            if not why:
                return self
            print(f"{self.name}: the volumes were not mounted in the container "
                  f"(try {attempt}: {why}); starting a new one", file=sys.stderr)
            self.remove()
            time.sleep(attempt)
            self.name = buildah("from", "--pull-never", IMAGE)
        raise AssertionError(f"buildah run never mounted the state and runtime volumes: {why}")

    def _run(self) -> None:
        argv = (self.config.get("Entrypoint") or []) + (self.config.get("Cmd") or [])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["buildah", *STORAGE, "run", "--isolation", "chroot", "--network", "host",
                 *self.env, *self.mounts, self.name, "--", *argv],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.health() == 200 or self.proc.poll() is not None, timeout=60,
                   what="orchd in the container to answer /health")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def _unmounted(self) -> str:
        """Why the running orchd does not see the host's two directories at /var/lib/orchd
        and /run/orchd (the same device and inode through its own root, /proc/PID/root);
        empty when it does. A mount point alone is not enough: the image declares both as
        volumes, and without the bind mounts they are empty volumes of their own. (Nothing
        is written: once orchd made the state directory its own, 0700, root here may not
        write into it.)"""
        pid = self._orchd_pid()
        if pid is None:
            return "no orchd process below buildah's"
        for host, inside in ((self.state, "var/lib/orchd"), (self.rundir, "run/orchd")):
            try:
                seen, there = os.stat(host), os.stat(f"/proc/{pid}/root/{inside}")
            except OSError as exc:
                return f"orchd {pid}: {exc}"
            if (seen.st_dev, seen.st_ino) != (there.st_dev, there.st_ino):
                return (f"orchd {pid}: /{inside} is device {there.st_dev} inode {there.st_ino}, "
                        f"the host's {host} {seen.st_dev}/{seen.st_ino}")
        return ""

    def _orchd_pid(self) -> int | None:
        """The orchd process below this container's buildah process."""
        assert self.proc is not None
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor != self.proc.pid:
                ancestor = parents.get(ancestor)
            if ancestor != self.proc.pid:
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"/orchd") for arg in argv[:2]):
                return pid
        return None

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                        timeout=2) as r:
                return int(r.status)
        except (OSError, urllib.error.URLError):
            return None

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker exec``: a command in the running container, as the image's user."""
        cmd = ["buildah", *STORAGE, "run", "--isolation", "chroot", "--network", "host",
               *self.env, *self.mounts, self.name, "--", *argv]
        if check:
            return run(cmd, timeout=60)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    def _entrypoint_pid(self) -> int | None:
        """The entrypoint's process (tini), below buildah's."""
        assert self.proc is not None
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        entry = (self.config.get("Entrypoint") or [""])[0]
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor != self.proc.pid:
                ancestor = parents.get(ancestor)
            if ancestor != self.proc.pid:
                continue
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.decode() == entry:
                return pid
        return None

    def stop(self, timeout: float = 45) -> int:
        """``docker stop``: the image's stop signal to the entrypoint, then wait."""
        assert self.proc is not None
        if self.proc.poll() is None:
            pid = self._entrypoint_pid()
            assert pid is not None, "the entrypoint process is not running"
            sig = getattr(signal, self.config.get("StopSignal") or "SIGTERM")
            os.kill(pid, sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # orchd runs in a session of its own below buildah: the group's kill misses it.
            orchd = self._orchd_pid()
            if orchd is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orchd, signal.SIGKILL)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        subprocess.run(["buildah", *STORAGE, "rm", self.name], capture_output=True,
                       timeout=60, check=False)


@pytest.fixture
def containers(image: dict[str, Any]) -> Iterator[Any]:
    """A factory of containers sharing one state volume; all are removed after the test."""
    work = short_tmpdir()
    state, rundir = work / "state", work / "run"
    for d in (state, rundir):
        d.mkdir(mode=0o750)
        os.chown(d, 10001, 10001)
    made: list[Container] = []
    port = free_port()

    def make() -> Container:
        made.append(Container(image, state, rundir, port))
        return made[-1]

    make.state = state  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for c in made:
            c.remove()
        shutil.rmtree(work, ignore_errors=True)


def _admin(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_image_runs_orchd_as_uid_10001_with_its_healthcheck(image, containers) -> None:
    assert image["User"] == "orchd:orchd"
    c = containers().start()
    assert c.exec("id", "-u").stdout.strip() == "10001"
    health = image["Healthcheck"]["Test"]
    assert health[0] == "CMD-SHELL"
    probe = c.exec("/bin/sh", "-c", health[1], check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    status = c.exec("orchctl", "status")
    assert "endpoints" in status.stdout.lower() or "healthy" in status.stdout.lower(), \
        status.stdout
    assert c.stop() == 0, "a graceful stop exits 0"
    log = c.log.read_text()
    assert "stopping: draining" in log and "Traceback" not in log, log[-3000:]
    # The healthcheck fails once orchd is gone.
    assert c.exec("/bin/sh", "-c", health[1], check=False).returncode != 0


def test_a_registration_survives_a_new_container_on_the_same_volume(containers) -> None:
    first = containers().start()
    body = {"config": {"name": "kept", "url": "http://127.0.0.1:9/kept"}}
    assert _admin(first.port, "POST", "/registry/endpoints", body) == 201
    assert first.stop() == 0
    stored = [p for p in containers.state.rglob("*") if p.is_file()]
    assert stored and all(p.stat().st_uid == 10001 for p in stored), stored
    second = containers().start()
    assert _admin(second.port, "GET", "/registry/endpoints/kept") == 200
    assert second.stop() == 0


def test_the_request_path_is_compiled_in_the_image(containers) -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    compiled = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "COMPILED")
    modules = [p.removesuffix(".py").replace("/", ".") for p in compiled]
    c = containers()
    files = c.exec("python", "-c", "import importlib, sys\n"
                   "for m in sys.argv[1:]: print(importlib.import_module(m).__file__)",
                   *modules).stdout.split()
    assert len(files) == len(modules)
    assert all(f.startswith("/opt/orchd/") and f.endswith(".so") for f in files), files


def test_the_image_runs_the_checkouts_code(containers) -> None:
    """Every orchd and orchctl module in the image is the checkout's: a build cache that
    hands back an older wheel is caught here, not by a user."""
    sources = sorted(p.relative_to(ROOT).as_posix() for package in ("orchd", "orchctl")
                     for p in (ROOT / package).rglob("*.py"))
    expected = [hashlib.sha256((ROOT / s).read_bytes()).hexdigest() for s in sources]
    c = containers()
    found = c.exec("python", "-c", "import hashlib, pathlib, sys, orchd\n"
                   "site = pathlib.Path(orchd.__file__).parent.parent\n"
                   "for s in sys.argv[1:]:\n"
                   "    p = site / s\n"
                   "    print(hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else '-')",
                   *sources).stdout.split()
    stale = [s for s, want, got in zip(sources, expected, found, strict=True) if want != got]
    assert not stale, f"the image's copies differ from the checkout: {stale}"
