"""The config file watcher (``ConfigWatcher``): a source of changes that is not an HTTP call.

The watcher only enqueues a ``Reload("file")`` on the change consumer (``orchd.changes``), like
``SIGHUP`` and ``POST /config/reload`` do. watchdog calls us on its own thread: each event is
handed to the loop with ``call_soon_threadsafe`` and debounced there (``debounce`` after the
last event, at most ``max_delay`` after the first), so a file written in several steps is read
once, whole.

The *directory* is watched, not the file: editors save by writing a temporary file and
renaming it over the original (the old inode is gone), and Kubernetes updates a ConfigMap
volume by swapping a ``..data`` symlink that the file is reached through. When the config path
is a symlink, the directory it resolves to is watched as well, and re-resolved after every
change (the old target directory of a ``..data`` swap is deleted).

Events for other files in the directory (a log file next to the config, say) are dropped on
watchdog's thread. A reload is queued only when the file's content differs from what the last
reload read (any trigger's reload updates ``ChangeConsumer.last_read_digest``): touching the
file is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from orchd.changes import ChangeConsumer, Reload, file_digest
from orchd.log import config_logger

__all__ = ("ConfigWatcher",)

_IGNORED = frozenset({"opened", "closed_no_write"})  # our own reads of the file


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: ConfigWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED or not self.watcher.concerns(event):
            return
        loop = self.watcher.loop
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to do
            loop.call_soon_threadsafe(self.watcher.poke)


class ConfigWatcher:
    """Watch the config file's directory and queue a reload when its content changed."""

    def __init__(self, path: str, changes: ChangeConsumer, debounce: float = 0.25,
                 max_delay: float = 2.0) -> None:
        self.path = Path(os.path.abspath(path))
        self.changes = changes
        self.debounce = debounce
        self.max_delay = max_delay
        self.loop = asyncio.get_running_loop()
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._handler = _Handler(self)
        self._target_dir: Path | None = None
        self._target_watch: ObservedWatch | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._first_event: float | None = None
        self._names = self._relevant_names()
        if changes.last_read_digest is None:
            changes.last_read_digest = file_digest(self.path)

    def start(self) -> None:
        """Start watching; raises OSError when the directory cannot be watched."""
        observer = Observer()
        observer.schedule(self._handler, os.fspath(self.path.parent), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._follow_symlink()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def _follow_symlink(self) -> None:
        """Also watch the directory the path resolves to, when that is somewhere else."""
        if self._observer is None:
            return
        real = self.path.resolve().parent
        if real == self.path.parent or real == self._target_dir:
            return
        if self._target_watch is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._target_watch)
            self._target_watch = None
            self._target_dir = None
        if not real.is_dir():
            return
        try:
            self._target_watch = self._observer.schedule(self._handler, os.fspath(real),
                                                         recursive=False)
            self._target_dir = real
        except OSError as exc:
            config_logger.warning("cannot watch %s (the target of %s): %s",
                                  real, self.path, exc)

    def _relevant_names(self) -> frozenset[str]:
        """Names in the config's directory whose change can change what the path reads:
        the file itself, the first step of its symlink (``..data`` on Kubernetes)."""
        names = {self.path.name}
        with contextlib.suppress(OSError):
            link = os.readlink(self.path)
            if not os.path.isabs(link):
                names.add(Path(link).parts[0])
        return frozenset(names)

    def concerns(self, event: FileSystemEvent) -> bool:
        """Whether an event can matter (called on watchdog's thread: reads only)."""
        target = self._target_dir
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            parent, name = os.path.split(path)
            if name in self._names or name.startswith(".."):
                return True
            if target is not None and parent == os.fspath(target):
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
        self._follow_symlink()
        digest = file_digest(self.path)
        if digest is None:
            return  # the file is missing for a moment (a swap in progress): wait for more
        if digest == self.changes.last_read_digest:
            return
        config_logger.info("%s changed on disk: reloading", self.path)
        self.changes.submit_nowait(Reload("file"))
