"""Change sources that are not HTTP calls: the config file watcher and signals.

Both only enqueue a ``Reload`` on the change consumer. watchdog calls us on its own thread:
its events are handed to the loop with ``call_soon_threadsafe`` and debounced there, so a
file written in several steps is read once, whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from orchd.log import config_logger
from orchd.watcher import ChangeConsumer, Reload

__all__ = ("ConfigWatcher",)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: ConfigWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.watcher.loop.call_soon_threadsafe(self.watcher.poke)


class ConfigWatcher:
    """Watch the config file's directory (editors save by rename; Kubernetes swaps a
    ``..data`` symlink) and reload when the file's content changed."""

    def __init__(self, path: str, changes: ChangeConsumer, debounce: float = 0.3) -> None:
        self.path = Path(path)
        self.changes = changes
        self.debounce = debounce
        self.loop = asyncio.get_running_loop()
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._timer: asyncio.TimerHandle | None = None
        self._digest = _digest(self.path)

    def start(self) -> None:
        observer = Observer()
        watched = {self.path.parent.resolve()}
        real = self.path.resolve().parent
        watched.add(real)
        for directory in watched:
            observer.schedule(_Handler(self), os.fspath(directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def mark_loaded(self) -> None:
        """The file as it is now has been applied (by any trigger)."""
        self._digest = _digest(self.path)

    def poke(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        digest = _digest(self.path)
        if digest is None or digest == self._digest:
            return
        self._digest = digest
        config_logger.info("%s changed on disk: reloading", self.path)
        self.changes.submit_nowait(Reload("file"))
