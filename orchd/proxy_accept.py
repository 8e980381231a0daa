"""The PROXY protocol header before TLS: ``server.proxy_protocol`` with ``server.tls``.

A load balancer that passes TLS through (HAProxy ``mode tcp`` with ``send-proxy-v2``, AWS NLB
with proxy protocol) sends its PROXY header in clear, then the client's TLS bytes. A TLS
listener would read the header as a broken handshake, so on such a port orchd accepts
connections itself: a peer in ``server.trusted_proxies`` has ``header_timeout`` to send its
header, which is read from the socket exactly (the bytes after it are the TLS handshake and
stay in the socket), then the connection is served with TLS by the public listener's
protocol, told the client the header named. Any other peer's connection goes to TLS at once
(an untrusted peer's header then fails its handshake, as it should).

What it does not do: parse the header (``orchd.proxy_protocol``) or decide trust beyond the
socket's peer being in ``trusted_proxies`` (``orchd.client_ip``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from orchd import proxy_protocol
from orchd.client_ip import Networks, address_in
from orchd.edge_rules import SettingsFn
from orchd.log import server_logger

__all__ = ("ProxyThenTls", "serve_public")

_V2_FIXED: Final = 16  # signature, version/command, family, length


class _Pending:
    """One trusted peer's connection while its header arrives."""

    __slots__ = ("buf", "peer", "sock", "timer")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None


class ProxyThenTls:
    """Accepts on ``sock`` and hands each connection, TLS started, to a protocol from
    ``factory``; a trusted peer's after its PROXY header (the protocol's ``told(client)`` is
    called before its ``connection_made``)."""

    def __init__(self, sock: socket.socket, factory: Callable[[], Any], tls: ssl.SSLContext,
                 trusted: Callable[[], Networks], header_timeout: Callable[[], float],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self._factory = factory
        self._tls = tls
        self._trusted = trusted
        self._timeout = header_timeout
        self._loop = loop
        self._pending: dict[int, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._accept)
        self._open = True

    def close(self) -> None:
        """Stop accepting; connections waiting for their header are closed."""
        if self._open:
            self._open = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.sock.fileno())
        for pending in list(self._pending.values()):
            self._drop(pending)

    # -- accepting

    def _accept(self) -> None:
        for _ in range(64):  # then let the loop run: the reader is called again
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the connection waits in the queue
                server_logger.warning("accepting a connection failed: %s", exc)
                return
            conn.setblocking(False)
            peer = str(addr[0]) if isinstance(addr, tuple) else ""
            if address_in(peer, self._trusted()):
                pending = _Pending(conn, peer)
                self._pending[conn.fileno()] = pending
                pending.timer = self._loop.call_later(self._timeout(), self._expired, pending)
                self._loop.add_reader(conn.fileno(), self._readable, pending)
            else:
                self._serve(conn, None, told=False)

    def _readable(self, pending: _Pending) -> None:
        """Read the header exactly: never a byte of what follows it (the TLS handshake)."""
        sock, buf = pending.sock, pending.buf
        try:
            ahead = sock.recv(proxy_protocol.V2_MAX, socket.MSG_PEEK)
            if not ahead:
                self._drop(pending)
                return
            if (buf or ahead)[:1] == proxy_protocol.V2_SIGNATURE[:1]:
                # Version 2: its fixed 16 bytes, then as many as their length field says.
                if len(buf) < _V2_FIXED:
                    need = _V2_FIXED - len(buf)
                else:
                    size = _V2_FIXED + int.from_bytes(buf[14:16], "big")
                    if size > proxy_protocol.V2_MAX:
                        raise proxy_protocol.ProxyHeaderError(
                            f"a version 2 header of {size} bytes")
                    need = size - len(buf)
                buf += sock.recv(min(need, len(ahead)))
            else:  # version 1 (or not a header at all): up to the line's end, no further
                end = ahead.find(b"\n")
                buf += sock.recv(end + 1 if end >= 0 else len(ahead))
            header = proxy_protocol.parse(buf)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, proxy_protocol.ProxyHeaderError) as exc:
            server_logger.info("closing a connection from %s, a trusted proxy: %s",
                               pending.peer, exc)
            self._drop(pending)
            return
        if header is None:
            if len(buf) >= proxy_protocol.V2_MAX:
                self._drop(pending)
            return
        self._forget(pending)
        self._serve(sock, header.source, told=True)

    def _expired(self, pending: _Pending) -> None:
        server_logger.info("closing a connection from %s, a trusted proxy: no PROXY header "
                           "within header_timeout", pending.peer)
        self._drop(pending)

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(pending.sock.fileno())
        if pending.timer is not None:
            pending.timer.cancel()

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        pending.sock.close()

    # -- serving

    def _serve(self, conn: socket.socket, client: str | None, *, told: bool) -> None:
        protocol = self._factory()
        if told:  # a trusted proxy's header named the client (None: LOCAL, the proxy's own)
            protocol.told(client)
        task = self._loop.create_task(self._start_tls(conn, protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_tls(self, conn: socket.socket, protocol: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._tls,
                ssl_handshake_timeout=max(self._timeout(), 1.0))
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            conn.close()


async def serve_public(runner: web.BaseRunner, socks: list[socket.socket],
                       tls: ssl.SSLContext | None, settings: SettingsFn,
                       proxy_first: bool) -> list[ProxyThenTls]:
    """Serve the public port's listening sockets with ``runner``: as aiohttp sites, or, for
    TLS with ``server.proxy_protocol`` (``proxy_first``), accepted here. Answers the
    listeners made here, which the caller closes when it stops accepting."""
    if tls is None or not proxy_first:
        for sock in socks:
            await web.SockSite(runner, sock, ssl_context=tls).start()
        return []
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None

    def trusted() -> Networks:  # turned off by a reload: no peer's header is read
        limits = settings()
        return limits.trusted_proxies if limits.proxy_protocol else ()

    listeners = [ProxyThenTls(sock, server, tls, trusted, lambda: settings().header_timeout,
                              loop) for sock in socks]
    for listener in listeners:
        listener.start()
    return listeners
