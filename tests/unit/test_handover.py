"""The successor's side of the handover: which inherited sockets it takes, and where its
notifications go once it is ready."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from orchd import handover


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_inherited_sockets_are_taken_when_the_address_matches() -> None:
    public, control = listener(), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"orchd-test-{os.getpid()}.sock"
    control.bind(str(path))
    control.listen()
    try:
        port = public.getsockname()[1]
        env = {handover.ENV_FDS: f"{os.dup(public.fileno())}:public,"
                                 f"{os.dup(control.fileno())}:control"}
        inherited = handover.Inherited.from_environ(env)
        assert handover.ENV_FDS not in env
        taken = inherited.public_for("127.0.0.1", port)
        assert [s.getsockname() for s in taken] == [("127.0.0.1", port)]
        sock = inherited.control_for(str(path))
        assert sock is not None and sock.getsockname() == str(path)
        for s in (*taken, sock):
            s.close()
    finally:
        public.close()
        control.close()
        path.unlink(missing_ok=True)


def test_a_changed_port_binds_anew_instead() -> None:
    public = listener()
    try:
        port = public.getsockname()[1]
        env = {handover.ENV_FDS: f"{os.dup(public.fileno())}:public"}
        inherited = handover.Inherited.from_environ(env)
        assert inherited.public_for("127.0.0.1", port + 1) == []
        assert inherited.public == []
    finally:
        public.close()


def test_adopted_switches_to_the_service_managers_socket() -> None:
    env = {"NOTIFY_SOCKET": "@orchd-handover-1-abc", handover.ENV_NOTIFY: "/run/systemd/notify"}
    handover.adopted(env)
    assert env == {"NOTIFY_SOCKET": "/run/systemd/notify"}
    env = {"NOTIFY_SOCKET": "@orchd-handover-1-abc"}
    handover.adopted(env)
    assert env == {}
