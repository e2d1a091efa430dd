"""A lean HTTP/1.1 GET client for the scale benchmark's fill and probe: one keep-alive connection a
``Connection``, one request on it at a time, the answer read by its ``Content-Length``.

The fill and the probe share the 2 CPUs with the node they measure. aiohttp's client took about
0.37 ms of CPU a request there (30% of a CPU for a fill at 800/s), CPU the node then did not get:
the measurement disturbed what it measured. This client takes a tenth of that. It reads only what
an idres node answers (a status line, headers, a ``Content-Length`` body); anything else (a chunked
body, a closed connection) is an error the caller counts, never a benchmark figure.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

__all__ = ["Connection", "HttpError", "connect"]

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 65_536


class HttpError(Exception):
    """An answer this client cannot read, or a connection lost."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``get`` sends one request and waits for its whole answer."""

    def __init__(self, host: str) -> None:
        self._host = host.encode("ascii")
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._length = -1  # the body's length once the head is read; -1 while reading the head
        self._status = 0
        self._head = 0  # bytes of the head, the blank line included

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(HttpError(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._length < 0:
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._fail(HttpError("an answer's head exceeded 64 KiB"))
                return
            try:
                self._status, self._length = _parse_head(bytes(buffer[:end]))
            except HttpError as exc:
                self._fail(exc)
                return
            self._head = end + len(_HEAD_END)
        if len(buffer) < self._head + self._length:
            return
        body = bytes(buffer[self._head : self._head + self._length])
        del buffer[: self._head + self._length]
        self._length = -1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    # -- use -------------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def get(self, path: str, *, timeout: float, headers: bytes = b"") -> tuple[int, bytes]:
        """The status and body of ``GET path``, or HttpError after ``timeout`` seconds (the connection
        is then closed); ``headers``: extra header lines, each ending CRLF."""
        transport = self._transport
        if transport is None or self._waiter is not None:
            raise HttpError("the connection is closed" if transport is None else "a request is already out")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, self._fail, HttpError(f"no answer in {timeout:g} s"))
        transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode("ascii"), self._host, headers))
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: HttpError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._transport is not None:
            self._transport.close()


def _parse_head(head: bytes) -> tuple[int, int]:
    """The status and ``Content-Length`` of an answer's head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    length = -1
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            raise HttpError("a chunked answer: this client reads Content-Length bodies only")
    if length < 0:
        raise HttpError("an answer without Content-Length")
    return int(parts[1]), length


async def connect(url: str) -> Connection:
    """A connection to the server of ``url`` (``http://host:port``; the path is ignored)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r}: this client speaks plain http to host:port only")
    host = f"{parts.hostname}:{parts.port}"
    _, protocol = await asyncio.get_running_loop().create_connection(
        lambda: Connection(host), parts.hostname, parts.port
    )
    return protocol
