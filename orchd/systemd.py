"""The two systemd protocols orchd speaks: sd_notify and socket activation (LISTEN_FDS)."""

from __future__ import annotations

import os
import socket

__all__ = ("SD_LISTEN_FDS_START", "listen_sockets", "notify")

SD_LISTEN_FDS_START = 3


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1`` ...) to ``$NOTIFY_SOCKET``; False when there is none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def listen_sockets(unset: bool = True) -> list[socket.socket]:
    """Sockets passed by the service manager, when ``$LISTEN_PID`` is this process."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        out.append(socket.socket(fileno=fd))
    return out
