"""The recursive node's lean HTTP/1.1 client for the one exchange a resolution needs: ``GET`` of an
identifier (or ``/healthz``) on a server named by the tree, over a pool of keep-alive connections.

Why not aiohttp's client, as every other exchange between nodes uses (``resolver.client``): a cache
miss costs the recursive node about 0.9 ms of CPU, and a fifth of it was aiohttp's ``ClientSession``
building the request and its response objects; this client does the same exchange in a fraction of
that (``python -m benchmarks scale``, issue 12). It reads answers with llhttp (``httptools``), the
parser uvicorn uses, so what a hostile server sends is parsed by a well-kept parser, and holds the
answer to the limits ``resolver.client`` holds any answer to (``answer_reply``: size, media type, no
redirect), with two of its own: a head of at most ``MAX_HEAD_BYTES`` and at most
``limit_per_host`` connections to one server (more requests wait for one), ``limit`` in all.

A connection is reused while the server keeps it alive. One that the server closed while it sat in
the pool is found on reuse: a request that got no byte of answer on a reused connection is sent
once more on a new one (a GET changes nothing). Idle connections are closed after ``IDLE_SECONDS``,
at most ``limit`` are kept in all, and a server's pool entry goes with its last connection, so what
is kept stays bounded whatever servers referrals name (DESIGN §11). A connection on which a server
sends anything but one answer to the one request is closed, never reused.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlencode

import httptools

from resolver.client import MAX_ANSWER_BYTES, BadAnswer, Reply, answer_reply, handle_path, upstream_url
from resolver.errors import FailureKind, UpstreamError

__all__ = ["IDLE_SECONDS", "MAX_HEAD_BYTES", "ConnectionPool", "PooledTransport"]

MAX_HEAD_BYTES = 65_536  # status line and headers of one answer
IDLE_SECONDS = 15.0  # an idle connection is closed after this long (aiohttp's keep-alive default)
_HEADERS_KEPT = {b"content-type", b"content-length", b"www-authenticate", b"retry-after"}


class _Lost(Exception):
    """The connection ended before the answer did; ``answered``: some of the answer had come."""

    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered


class _Connection(asyncio.Protocol):
    """One connection to one server, one exchange at a time."""

    def __init__(self, limit: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        self._limit = limit
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self._received = 0  # bytes of this answer so far
        self._body_bytes = 0
        self._chunked = False
        self._keep_alive = False
        self._head_done = False
        self._complete = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        delimited = self._head_done and not self._chunked and "content-length" not in self.headers
        if delimited and self._waiter is not None:
            self._finish()  # a body delimited by the end of the connection (HTTP/1.0 style)
            return
        reason = f"connection lost ({exc})" if exc else "the server closed the connection"
        self._fail(_Lost(reason, answered=self._received > 0))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is not to be trusted again
            self.close()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the server switched protocols, not a Handle answer"))
            return
        except httptools.HttpParserError as exc:
            # A limit a callback below enforced comes back as the parser's error's context.
            cause = exc.__context__
            self._fail(cause if isinstance(cause, BadAnswer) else BadAnswer(f"not a valid HTTP answer ({exc})"))
            return
        # Checked once a read is parsed (the parser holds an unfinished header line): a read is at
        # most the loop's buffer, so no more than that is held past the limit.
        if not self._head_done and self._received > MAX_HEAD_BYTES:
            self._fail(BadAnswer(f"the answer's head exceeded {MAX_HEAD_BYTES} bytes"))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _HEADERS_KEPT:
            self.headers[name.decode("latin-1")] = value.decode("latin-1")
        elif name == b"transfer-encoding":
            self._chunked = True

    def on_headers_complete(self) -> None:
        self._head_done = True
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if self.status < 200:
            raise BadAnswer(f"answered HTTP {self.status}, not a Handle answer")
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            raise BadAnswer(f"the answer of {declared} bytes exceeded the limit of {self._limit} bytes")

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)
        self._body_bytes += len(chunk)
        if self._body_bytes > self._limit:
            raise BadAnswer(f"the answer exceeded the limit of {self._limit} bytes")

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: the connection is out of step
            raise BadAnswer("the server sent more than one answer to one request")

    def on_message_complete(self) -> None:
        self._finish()

    # -- one exchange ----------------------------------------------------------------------------

    def _finish(self) -> None:
        self._complete = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    async def exchange(self, request: bytes) -> None:
        """Send ``request`` and wait for the whole answer (``status``, ``headers``, ``body``)."""
        if self.transport is None or self.transport.is_closing():
            raise _Lost("the server closed the connection", answered=False)
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._waiter

    @property
    def keep_alive(self) -> bool:
        return self._complete and self._keep_alive and self.transport is not None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _Server:
    """A server's idle connections (most recent last) and its requests."""

    __slots__ = ("busy", "idle", "slots")

    def __init__(self, per_host: int) -> None:
        self.idle: deque[_Connection] = deque()
        self.busy = 0  # requests using or waiting for a connection
        self.slots = asyncio.Semaphore(per_host)


class ConnectionPool:
    """Keep-alive connections by server origin, for ``GET`` only. Call it from a coroutine and
    ``close`` it when done (it belongs to the running loop)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        *,
        limit: int = 256,
        limit_per_host: int = 64,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._ssl = ssl_context
        self._per_host = limit_per_host
        self._slots = asyncio.Semaphore(limit)
        self._limit = max_answer_bytes
        self._servers: dict[str, _Server] = {}
        self._idle = 0  # connections kept idle, in all servers' lists
        self._max_idle = limit  # past it a connection is closed, not kept: bounded whatever servers are asked
        self._swept = time.monotonic()

    async def get(self, base_url: str, path: str, timeout: float) -> Reply:
        """The answer to ``GET path`` (already encoded) from the server at ``base_url``, msgpack asked
        for; an UpstreamError (one ``Attempt``) when there is none this client will read."""
        what = f"GET {base_url.rstrip('/')}{path}"
        try:
            url = upstream_url(base_url, path)
        except ValueError as exc:
            raise UpstreamError.one(base_url, FailureKind.CANNOT_CONNECT, str(exc), what=what) from exc
        origin, host, port = f"{url.scheme}://{url.raw_authority}", url.raw_host or "", url.port or 0
        request = (
            f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {url.raw_authority}\r\nAccept: application/msgpack\r\n"
            "User-Agent: idres\r\n\r\n"
        ).encode("ascii")
        try:
            async with asyncio.timeout(timeout):
                return await self._get(origin, url.scheme == "https", host, port, request)
        except TimeoutError as exc:  # before OSError, of which it is one
            raise UpstreamError.one(base_url, FailureKind.TIMEOUT, "timed out", what=what) from exc
        except BadAnswer as exc:
            raise UpstreamError.one(base_url, exc.kind, str(exc), what=what) from exc
        except _Lost as exc:
            raise UpstreamError.one(base_url, FailureKind.CONNECTION_LOST, str(exc), what=what) from exc
        except (OSError, ssl.SSLError) as exc:
            reason = (
                f"cannot connect ({os.strerror(exc.errno) if exc.errno and not isinstance(exc, ssl.SSLError) else exc})"
            )
            raise UpstreamError.one(base_url, FailureKind.CANNOT_CONNECT, reason, what=what) from exc

    async def _get(self, origin: str, tls: bool, host: str, port: int, request: bytes) -> Reply:
        server = self._servers.get(origin)
        if server is None:
            server = self._servers[origin] = _Server(self._per_host)
        server.busy += 1
        try:
            async with server.slots, self._slots:
                for attempt in (1, 2):
                    connection = await self._connection(server, tls, host, port)
                    try:
                        await connection.exchange(request)
                    except _Lost as exc:
                        connection.close()
                        if exc.answered or not connection.reused or attempt == 2:
                            raise
                        continue  # closed by the server while idle: once more on a new connection
                    except BaseException:
                        connection.close()
                        raise
                    reply = answer_reply(
                        connection.status,
                        connection.headers.get("content-type", ""),
                        b"".join(connection.body),
                        connection.headers.get("www-authenticate"),
                        connection.headers.get("retry-after"),
                    )
                    if connection.keep_alive and self._idle < self._max_idle:
                        connection.idle_since = time.monotonic()
                        connection.reused = True
                        server.idle.append(connection)
                        self._idle += 1
                    else:
                        connection.close()
                    return reply
                raise AssertionError("unreachable")  # pragma: no cover
        finally:
            server.busy -= 1
            self._tidy(origin, server)

    async def _connection(self, server: _Server, tls: bool, host: str, port: int) -> _Connection:
        """An idle connection that is still open, else a new one."""
        expired = time.monotonic() - IDLE_SECONDS
        while server.idle:
            connection = server.idle.pop()
            self._idle -= 1
            transport = connection.transport
            if transport is not None and not transport.is_closing() and connection.idle_since > expired:
                return connection
            connection.close()
        _, protocol = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(self._limit),
            host.strip("[]"),
            port,
            ssl=self._ssl if tls else None,
            server_hostname=host.strip("[]") if tls else None,
        )
        return protocol

    def _tidy(self, origin: str, server: _Server) -> None:
        """Drop a server no request uses and with no idle connection; now and then, close every
        connection idle too long (a server no longer asked keeps none open)."""
        now = time.monotonic()
        if now - self._swept > IDLE_SECONDS:
            self._swept = now
            for other in self._servers.values():
                while other.idle and other.idle[0].idle_since < now - IDLE_SECONDS:
                    other.idle.popleft().close()
                    self._idle -= 1
            for name in [n for n, s in self._servers.items() if not s.busy and not s.idle]:
                del self._servers[name]
        elif not server.busy and not server.idle:
            self._servers.pop(origin, None)

    def __len__(self) -> int:
        """Servers with a connection open or in use."""
        return len(self._servers)

    async def close(self) -> None:
        for server in self._servers.values():
            while server.idle:
                server.idle.pop().close()
        self._servers.clear()
        self._idle = 0


class PooledTransport:
    """The resolver's transport (``resolver.walk.Transport``) over a ``ConnectionPool``, as
    ``resolver.client.HttpTransport`` is over aiohttp: the recursive node's."""

    def __init__(self, pool: ConnectionPool, *, params: Sequence[tuple[str, str]] = ()) -> None:
        self._pool = pool
        self._query = f"?{urlencode(params)}" if params else ""

    async def query(self, url: str, handle: str, timeout: float) -> tuple[int, Mapping[str, Any]]:
        reply = await self._pool.get(url, handle_path(handle) + self._query, timeout)
        return reply.status, reply.body

    async def probe(self, url: str, timeout: float) -> bool:
        try:
            reply = await self._pool.get(url, "/healthz", timeout)
        except UpstreamError:
            return False
        return reply.status == 200
