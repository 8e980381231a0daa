"""The supervisor's line to one worker: a stream of messages over a socket pair.

A message is a tuple whose first item names it, pickled (both ends run the same code: the
workers are forked from a server the supervisor started) and sent after its length. The
supervisor sends the state to serve and the targets' health and breakers; a worker sends
its breakers' outcomes, its traffic counters and its acknowledgements.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any, Final

__all__ = ("Channel", "encode", "open_channel")

_LENGTH: Final = struct.Struct("!I")
MAX_MESSAGE: Final = 256 * 1024 * 1024  # a longer length means a broken stream

Message = tuple[Any, ...]


class Channel(asyncio.Protocol):
    """One end of the line: ``send`` writes a message, ``on_message`` is called with each
    one received, ``on_lost`` once when the other end is gone."""

    def __init__(self, on_message: Callable[[Message], None],
                 on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = 0
        while len(buf) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buf, start)
            if size > MAX_MESSAGE:
                self.close()
                return
            end = start + _LENGTH.size + size
            if len(buf) < end:
                break
            message = pickle.loads(bytes(buf[start + _LENGTH.size:end]))
            start = end
            self._on_message(message)
        del buf[:start]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._on_lost()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, *message: Any) -> bool:
        """Queue a message; False when the other end is gone."""
        return self.send_encoded(encode(*message))

    def send_encoded(self, data: bytes) -> bool:
        """Queue a message ``encode`` made (once for every worker)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.writelines((_LENGTH.pack(len(data)), data))
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def encode(*message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


async def open_channel(sock: Any, on_message: Callable[[Message], None],
                       on_lost: Callable[[], None]) -> Channel:
    """Run a channel on ``sock`` (one end of a connected socket pair)."""
    loop = asyncio.get_running_loop()
    _, channel = await loop.connect_accepted_socket(lambda: Channel(on_message, on_lost), sock)
    return channel
