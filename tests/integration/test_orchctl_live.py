"""``orchctl status --live`` in a real terminal (tmux): a breaker tripped through the API
shows up in the table within seconds, and Ctrl-C ends it cleanly."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.support import IN_CI, ROOT, Orchd, base_config, wait_until

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None and not IN_CI,
                                reason="tmux is not installed (scripts/system-deps.sh)")


class Tmux:
    """One private tmux server (its own socket name), killed afterwards."""

    def __init__(self) -> None:
        assert TMUX is not None, "tmux is required (scripts/system-deps.sh installs it)"
        self.name = f"orchctl-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> str:
        proc = subprocess.run([TMUX, "-L", self.name, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "live")

    def kill(self) -> None:
        subprocess.run([TMUX, "-L", self.name, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.kill()


def _row(screen: str, url: str) -> str:
    return next((line for line in screen.splitlines() if url in line), "")


def test_status_live_redraws_on_breaker_events(tmux: Tmux) -> None:
    urls = ["http://127.0.0.1:9/a", "http://127.0.0.2:9/b"]
    daemon = Orchd(base_config({"name": "payments", "urls": urls}))
    try:
        daemon.start()
        command = (f"unset COLUMNS LINES; cd {shlex.quote(str(ROOT))} && "
                   f"{shlex.quote(sys.executable)} -m orchctl "
                   f"--socket {shlex.quote(str(daemon.socket))} status --live; "
                   "echo orchctl-exit=$?")
        tmux("new-session", "-d", "-s", "live", "-x", "200", "-y", "40",
             "-e", "TERM=xterm-256color", "sh")
        tmux("send-keys", "-t", "live", command, "Enter")
        try:
            wait_until(lambda: "closed" in _row(tmux.screen(), urls[0]), 20,
                       what="the live table to show the closed breaker")
        except AssertionError:
            raise AssertionError(f"screen:\n{tmux.screen()}") from None
        assert "forced_open" not in tmux.screen()
        assert "─" in tmux.screen() or "━" in tmux.screen(), "a table on a terminal"

        req = urllib.request.Request(f"{daemon.url}/health/circuit-breakers/payments/trip",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

        wait_until(lambda: all("forced_open" in _row(tmux.screen(), u) for u in urls), 5,
                   what="the rows to show forced_open")
        assert "last event: breaker" in tmux.screen()

        tmux("send-keys", "-t", "live", "C-c")
        def exit_line() -> str:
            return next((line for line in tmux.screen().splitlines()
                         if line.startswith("orchctl-exit=")), "")

        wait_until(exit_line, 10, what="orchctl to exit")
        screen = tmux.screen()
        assert exit_line() == "orchctl-exit=0", screen
        assert "Traceback" not in screen
    finally:
        daemon.cleanup()
