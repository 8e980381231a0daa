"""File watchers, sources of changes that are not an HTTP call: the config file
(``ConfigWatcher``) and the public port's certificate and key files (``CertificateWatcher``).

A watcher only enqueues a change on the change consumer (``orchd.changes``): ``Reload("file")``
like ``SIGHUP`` and ``POST /config/reload`` do, or ``ReloadCertificates("certificate file")``.
watchdog calls us on its own thread: each event is handed to the loop with
``call_soon_threadsafe`` and debounced there (``debounce`` after the last event, at most
``max_delay`` after the first), so a file written in several steps is read once, whole.

The *directory* is watched, not the file: editors save by writing a temporary file and
renaming it over the original (the old inode is gone), and Kubernetes updates a ConfigMap
volume by swapping a ``..data`` symlink that the file is reached through. When the config path
is a symlink, the directory it resolves to is watched as well, and re-resolved after every
change (the old target directory of a ``..data`` swap is deleted).

Events for other files in the directory (a log file next to the config, say) are dropped on
watchdog's thread. A config reload is queued only when the file's content differs from what
the last reload read (any trigger's reload updates ``ChangeConsumer.last_read_digest``), a
certificate reload only when the files' contents differ from what the watcher saw last:
touching a file is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from orchd.changes import ChangeConsumer, Reload, ReloadCertificates, file_digest
from orchd.log import config_logger

__all__ = ("CertificateWatcher", "ConfigWatcher")

_IGNORED = frozenset({"opened", "closed_no_write"})  # our own reads of the file


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED or not self.watcher.concerns(event):
            return
        loop = self.watcher.loop
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to do
            loop.call_soon_threadsafe(self.watcher.poke)


class FileWatcher:
    """Watch the directories of some files; ``changed()`` runs on the loop, debounced."""

    def __init__(self, paths: list[str], changes: ChangeConsumer, debounce: float = 0.25,
                 max_delay: float = 2.0) -> None:
        self.paths = [Path(os.path.abspath(p)) for p in paths]
        self.changes = changes
        self.debounce = debounce
        self.max_delay = max_delay
        self.loop = asyncio.get_running_loop()
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._handler = _Handler(self)
        self._dirs = sorted({p.parent for p in self.paths})
        self._targets: dict[Path, ObservedWatch] = {}  # directories symlinks resolve to
        self._timer: asyncio.TimerHandle | None = None
        self._first_event: float | None = None
        self._names = self._relevant_names()
        self._target_dirs = frozenset(os.fspath(d) for d in self._targets)

    def start(self) -> None:
        """Start watching; raises OSError when a directory cannot be watched."""
        observer = Observer()
        for directory in self._dirs:
            observer.schedule(self._handler, os.fspath(directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._follow_symlinks()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def _follow_symlinks(self) -> None:
        """Also watch the directories the paths resolve to, when those are elsewhere."""
        if self._observer is None:
            return
        wanted = {p.resolve().parent for p in self.paths} - set(self._dirs)
        for gone in set(self._targets) - wanted:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._targets.pop(gone))
        for real in wanted - set(self._targets):
            if not real.is_dir():
                continue
            try:
                self._targets[real] = self._observer.schedule(self._handler, os.fspath(real),
                                                              recursive=False)
            except OSError as exc:
                config_logger.warning("cannot watch %s (a symlink's target directory): %s",
                                      real, exc)
        self._target_dirs = frozenset(os.fspath(d) for d in self._targets)

    def _relevant_names(self) -> frozenset[str]:
        """Names in the watched directories whose change can change what the paths read:
        the files themselves, the first step of their symlinks (``..data`` on Kubernetes)."""
        names: set[str] = set()
        for path in self.paths:
            names.add(path.name)
            with contextlib.suppress(OSError):
                link = os.readlink(path)
                if not os.path.isabs(link):
                    names.add(Path(link).parts[0])
        return frozenset(names)

    def concerns(self, event: FileSystemEvent) -> bool:
        """Whether an event can matter (called on watchdog's thread: reads only)."""
        targets = self._target_dirs
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            parent, name = os.path.split(path)
            if name in self._names or name.startswith(".."):
                return True
            if parent in targets:
                return True
        return False

    def poke(self) -> None:
        """A file system event in a watched directory (on the loop's thread)."""
        now = self.loop.time()
        if self._first_event is None:
            self._first_event = now
        if self._timer is not None:
            self._timer.cancel()
        fire_at = min(now + self.debounce, self._first_event + self.max_delay)
        self._timer = self.loop.call_at(fire_at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._first_event = None
        self._names = self._relevant_names()
        self._follow_symlinks()
        self.changed()

    def changed(self) -> None:
        raise NotImplementedError


class ConfigWatcher(FileWatcher):
    """Watch the config file's directory and queue a reload when its content changed."""

    def __init__(self, path: str, changes: ChangeConsumer, debounce: float = 0.25,
                 max_delay: float = 2.0) -> None:
        super().__init__([path], changes, debounce, max_delay)
        self.path = self.paths[0]
        if changes.last_read_digest is None:
            changes.last_read_digest = file_digest(self.path)

    def changed(self) -> None:
        digest = file_digest(self.path)
        if digest is None:
            return  # the file is missing for a moment (a swap in progress): wait for more
        if digest == self.changes.last_read_digest:
            return
        config_logger.info("%s changed on disk: reloading", self.path)
        self.changes.submit_nowait(Reload("file"))


class CertificateWatcher(FileWatcher):
    """Watch the certificate and key files and queue their reload when one changed. A
    certificate and its key are rarely replaced in one step: the debounce lets both land,
    and a pair caught half-replaced fails to load, keeps the previous one and is retried at
    the next event."""

    def __init__(self, paths: list[str], changes: ChangeConsumer, debounce: float = 0.25,
                 max_delay: float = 2.0) -> None:
        super().__init__(paths, changes, debounce, max_delay)
        self._digests = self._read()

    def _read(self) -> tuple[str | None, ...]:
        return tuple(file_digest(p) for p in self.paths)

    def changed(self) -> None:
        digests = self._read()
        if digests == self._digests or None in digests:
            return  # nothing new, or a file missing for a moment: wait for more
        self._digests = digests
        config_logger.info("certificate files changed on disk: reloading them")
        self.changes.submit_nowait(ReloadCertificates("certificate file"))
