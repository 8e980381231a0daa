"""The control socket: permissions are the trust boundary, one orchd per socket, a stale
socket file is replaced, and the socket is removed on exit."""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import urllib.error
import urllib.request

import pytest

from tests.support import Orchd, base_config, short_tmpdir, wait_until


def _get(path: os.PathLike[str] | str, route: str) -> tuple[int, dict[str, object]]:
    """A bare HTTP/1.1 GET over the Unix socket (no client library in between)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(os.fspath(path))
        s.sendall(f"GET {route} HTTP/1.1\r\nHost: orchd\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body)


def test_socket_mode_directory_and_admin_api(orchd_factory) -> None:
    work = short_tmpdir()
    sock = work / "run" / "orchd" / "orchd.sock"  # a directory orchd has to create
    daemon = orchd_factory(base_config({"name": "svc", "url": "http://127.0.0.1:9"}),
                           workdir=work, extra_args=["--control-socket", str(sock)])
    mode = sock.lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    parent_mode = stat.S_IMODE(sock.parent.stat().st_mode)
    assert parent_mode & 0o007 == 0, f"{sock.parent} is open to others: {parent_mode:o}"

    status, info = _get(sock, "/control/info")
    assert status == 200 and info["pid"] == daemon.proc.pid and info["ready"] is True
    status, doc = _get(sock, "/registry/endpoints")
    assert status == 200 and [e["endpoint_id"] for e in doc["endpoints"]] == ["svc"]


def test_socket_group(orchd_factory) -> None:
    try:
        group = grp.getgrnam("daemon")
    except KeyError:
        pytest.skip("no group named daemon on this system")
    if os.geteuid() != 0 and group.gr_gid not in os.getgroups():
        pytest.skip("giving a socket to another group needs root or membership")
    config = base_config(server={"socket_group": "daemon"})
    daemon = orchd_factory(config)
    st = daemon.socket.lstat()
    assert st.st_gid == group.gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_second_orchd_on_the_same_socket_refuses_naming_it(orchd_factory) -> None:
    first = orchd_factory(base_config())
    second = Orchd(base_config(), workdir=short_tmpdir())
    second.socket = first.socket
    try:
        second.start(wait=False)
        assert second.proc is not None
        code = second.proc.wait(30)
        assert code == 3
        assert str(first.socket) in second.log()
        assert "another orchd" in second.log()
    finally:
        second.cleanup()
    status, _ = _get(first.socket, "/control/info")
    assert status == 200, "the first orchd keeps its socket"


def test_stale_socket_is_replaced_and_removed_on_exit(orchd_factory) -> None:
    daemon = orchd_factory(base_config(), start=False)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon.socket))  # a socket file nobody listens on, as after a crash
    stale.close()
    daemon.start()
    status, info = _get(daemon.socket, "/control/info")
    assert status == 200 and info["pid"] == daemon.proc.pid
    assert "stale" in daemon.log()

    assert daemon.stop() == 0
    assert not daemon.socket.exists()


def test_a_file_in_the_way_is_not_removed(orchd_factory) -> None:
    daemon = orchd_factory(base_config(), start=False)
    daemon.socket.write_text("not a socket")
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 3
    assert "not a socket" in daemon.log()
    assert daemon.socket.read_text() == "not a socket"


def test_control_stop_over_the_socket(orchd_factory) -> None:
    daemon = orchd_factory(base_config())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(daemon.socket))
        s.sendall(b"POST /control/stop HTTP/1.1\r\nHost: orchd\r\nContent-Length: 0\r\n"
                  b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202")
    assert daemon.proc is not None
    wait_until(lambda: daemon.proc.poll() is not None, 15, what="orchd to exit")
    assert daemon.proc.returncode == 0
    assert not daemon.socket.exists()


def test_control_routes_are_not_on_tcp(orchd_factory) -> None:
    daemon = orchd_factory(base_config())
    req = urllib.request.Request(f"{daemon.url}/control/stop", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    caught.value.close()
    assert caught.value.code in (404, 405)
    assert daemon.proc is not None and daemon.proc.poll() is None
