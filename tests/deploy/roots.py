"""Debian root file systems for the deployment tests, built once and cached.

``mkroot.sh`` builds them with mmdebstrap from Debian's packages; they are kept under
``${XDG_CACHE_HOME:-~/.cache}/orchd-test/`` keyed by a hash of that script (which holds the
package lists), so a warm run builds nothing and a changed list builds again. The container
storage of buildah and podman used by the tests lives there too, apart from the machine's
own (/var/lib/containers), so the tests never touch other images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IN_CI

__all__ = ("CACHE", "HERE", "STORAGE", "cached_root", "overlay", "require", "run")

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orchd-test"
# buildah and podman flags: the tests' own container storage, under the cache.
STORAGE = ["--root", str(CACHE / "containers"), "--runroot", "/run/orchd-test/containers",
           "--storage-driver", "overlay"]

# command -> the Debian package that has it (scripts/system-deps.sh installs them).
_PACKAGES = {"buildah": "buildah", "podman": "podman", "mmdebstrap": "mmdebstrap",
             "systemd-nspawn": "systemd-container"}


def require(*commands: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless every command is installed and we are root."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        packages = " ".join(_PACKAGES[c] for c in missing)
        message = (f"{', '.join(missing)} missing: apt-get update && apt-get install -y "
                   f"--no-install-recommends {packages} (or: scripts/system-deps.sh test)")
    elif os.geteuid() != 0:
        message = "the deployment tests build root file systems and boot them: run as root"
    else:
        return
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, the assertion shows its output's end."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, (f"{' '.join(cmd[:6])}... exited {proc.returncode}\n"
                                  f"{(proc.stdout + proc.stderr)[-6000:]}")
    return proc  # type: ignore[no-any-return]


def _key() -> str:
    return hashlib.sha256((HERE / "mkroot.sh").read_bytes()).hexdigest()[:16]


def cached_root(kind: str) -> Path:
    """The root file system ``kind`` (``image``: a tar file, ``systemd``: a directory),
    built by ``mkroot.sh`` unless the cache holds the one of the current script."""
    CACHE.mkdir(parents=True, exist_ok=True)
    suffix = ".tar" if kind == "image" else ""
    target = CACHE / f"{kind}-{_key()}{suffix}"
    with open(CACHE / f"{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and reuse it
        if target.exists():
            return target
        for stale in CACHE.glob(f"{kind}-*"):  # built from an older script
            _remove(stale)
        partial = target.with_name(f"{kind}-partial{suffix}")  # mmdebstrap reads the suffix
        _remove(partial)
        print(f"building the {kind} root file system (cached in {CACHE})", file=sys.stderr)
        run([str(HERE / "mkroot.sh"), kind, str(partial)], timeout=900)
        partial.rename(target)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def overlay(lower: Path, work: Path) -> Iterator[Path]:
    """``lower`` mounted read-write with the writes going to ``work``: the cached root stays
    as built. Unmounted on exit."""
    upper, scratch, merged = work / "upper", work / "work", work / "root"
    for d in (upper, scratch, merged):
        d.mkdir(parents=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged)], timeout=30)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-R", str(merged)], capture_output=True, timeout=60,
                       check=False)
        if os.path.ismount(merged):
            subprocess.run(["umount", "-l", str(merged)], capture_output=True, timeout=60,
                           check=False)
