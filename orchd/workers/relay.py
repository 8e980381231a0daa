"""Connections a worker does not serve itself, passed to the supervisor.

A worker's listener serves ``/orchestrator/`` requests; every other request (the admin API,
health, metrics, the dashboard, /events, WebSocket upgrades, and whatever the listener hands
over) belongs to the supervisor, which holds the instance's state. The worker makes a socket
pair, sends one end to the supervisor over its relay line (``SCM_RIGHTS``, one byte saying
whether the client's connection is TLS, then its socket's peer address, which admin trust
judges, and the client the worker found, e.g. from a balancer's PROXY header), and copies
bytes between the client and the other end: what the client sent so far, then both ways
until either side closes. The supervisor serves the pair's end with
its own listener (``orchd.front``), so its admin trust, limits and access log see the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final

from orchd.log import server_logger

__all__ = ("PLAIN", "TLS", "RelayIntake", "Relayer")

TLS: Final = b"S"
PLAIN: Final = b"P"


class _ClientSide(asyncio.Protocol):
    """The client's connection, once relayed: what it sends goes to the supervisor."""

    def __init__(self, transport: asyncio.Transport, first: bytes) -> None:
        self.transport = transport
        self.peer: asyncio.Transport | None = None
        self._pending = [first]
        self._eof = False
        self.closed = False

    def attach(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        peer.writelines(self._pending)
        self._pending = []
        if self._eof and peer.can_write_eof():
            peer.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True  # the answer may still come

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class _SupervisorSide(asyncio.Protocol):
    """The worker's end of the pair: what the supervisor answers goes to the client."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def eof_received(self) -> bool:
        self.client.transport.close()  # after what is buffered
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.client.transport.close()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class Relayer:
    """A worker's side: ``relay`` is what its listener calls (``FrontServer.relay``)."""

    def __init__(self, line: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._line = line
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()

    def relay(self, transport: asyncio.Transport, client: str, secure: bool, data: bytes,
              reading_paused: bool) -> None:
        ours, theirs = socket.socketpair()
        peer = transport.get_extra_info("peername")
        socket_peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            meta = (TLS if secure else PLAIN) + f"{socket_peer}\0{client}".encode()
            socket.send_fds(self._line, [meta], [theirs.fileno()])
        except OSError as exc:
            server_logger.warning("cannot pass a connection to the supervisor: %s", exc)
            ours.close()
            transport.close()
            return
        finally:
            theirs.close()
        side = _ClientSide(transport, data)
        transport.set_protocol(side)
        if reading_paused:
            transport.resume_reading()
        task = self._loop.create_task(self._connect(side, ours))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, side: _ClientSide, sock: socket.socket) -> None:
        try:
            peer, _ = await self._loop.connect_accepted_socket(lambda: _SupervisorSide(side),
                                                              sock)
        except OSError:
            sock.close()
            side.transport.close()
            return
        if side.closed:
            peer.close()
            return
        side.attach(peer)


class RelayIntake:
    """The supervisor's side of one worker's relay line: each connection received is
    given to ``serve`` (the socket, whether the client's connection is TLS, the address of
    its socket's peer, which admin trust judges, and the client the worker found)."""

    def __init__(self, line: socket.socket,
                 serve: Callable[[socket.socket, bool, str, str], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._line = line
        self._serve = serve
        self._loop = loop
        line.setblocking(False)
        loop.add_reader(line.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):  # then let the loop run; the reader is called again
            try:
                message, fds, _flags, _addr = socket.recv_fds(self._line, 64, 8)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if not message and not fds:
                self.close()  # the worker is gone
                return
            socket_peer, _, client = message[1:].decode(errors="replace").partition("\0")
            for fd in fds:
                self._serve(socket.socket(fileno=fd), message[:1] == TLS, socket_peer, client)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._line.fileno())
        self._line.close()
