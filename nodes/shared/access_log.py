"""The access log: one JSON line per request, written through aiohttp's access-logger hook.

aiohttp calls ``log(request, response, seconds)`` once a response is sent, for every request,
errors and unparsable requests included, so no middleware is needed (the recursive node runs none:
each layer costs its hot path about 3 us of 60). What only a handler knows it leaves on the request
or the response, under the typed keys below, for the line to carry:

- ``RESPONSE_CODE`` (response): the Handle responseCode of the body (``nodes.shared.http_api.respond``
  sets it for every Handle answer; the recursive hot path for its cached bytes);
- ``CACHE`` (request, recursive node): ``hit``, ``miss``, ``stale`` (an expired answer served because
  every upstream failed, RFC 8767) or ``bypass`` (credentials, writes and listings go to the owning
  primary without the cache);
- ``HOPS`` (request, recursive node): the upstream requests the answer took (the walk's tries, or
  the owning primary located and asked). Concurrent misses of one identifier share one walk
  (single-flight), so each of their lines counts that walk's tries.

A line: ``{"time": "2026-12-06T14:05:09.123Z", "node": "recursive", "client": "127.0.0.1",
"method": "GET", "path": "/api/handles/88.118.8/X?trace=true", "status": 200, "responseCode": 1,
"durationMs": 0.412, "cache": "miss", "upstreamHops": 3}``. Every line has every key: ``null`` where a
value does not apply (no Handle body, or ``cache`` and ``upstreamHops`` on an authoritative node).
The lines go to the logger ``idres.access`` (``ACCESS_LOGGER``), which ``nodes.shared.logs`` routes
to a file of their own or to stdout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Literal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

__all__ = [
    "ACCESS_LOGGER",
    "CACHE",
    "HOPS",
    "RESPONSE_CODE",
    "STARTED",
    "CacheOutcome",
    "access_logger_class",
    "iso_time",
]

ACCESS_LOGGER = "idres.access"

CacheOutcome = Literal["hit", "miss", "stale", "bypass"]

RESPONSE_CODE: web.ResponseKey[int] = web.ResponseKey("responseCode")
CACHE: web.RequestKey[CacheOutcome] = web.RequestKey("cache")
HOPS: web.RequestKey[int] = web.RequestKey("upstreamHops")
STARTED: web.RequestKey[float] = web.RequestKey("started")
"""``time.perf_counter()`` when a handler took the request (``nodes.shared.http_api`` and the recursive
GET handler set it). The duration aiohttp passes is measured with ``loop.time()``, which uvloop keeps
in whole milliseconds as of the start of the loop's iteration: useless for answers that take 60 us.
A request no handler saw (one aiohttp could not parse) is timed by aiohttp's figure."""

_wall, _clock = time.time, time.perf_counter  # the handlers' ``time`` parameter (aiohttp's name) hides the module


def _text(value: str | None) -> str:
    """A JSON string (ASCII, escaped by the json module's C encoder: no text can break the line), or null."""
    return "null" if value is None else encode_basestring_ascii(value)


def _number(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def iso_time(now: float, second: int, stamp: str) -> tuple[str, int, str]:
    """``now`` (epoch seconds) as ISO 8601 UTC to the millisecond, reusing ``stamp`` (the text of
    ``second``) while the second is the same: strftime once a second, not once a request. Returns
    the text and the second and stamp to pass next time."""
    whole = int(now)
    if whole != second:
        second, stamp = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{stamp}.{int((now - whole) * 1000):03d}Z", second, stamp


def access_logger_class(node: str, *, recursive: bool) -> type[AbstractAccessLogger]:
    """The access logger of node ``node`` for ``web.run_app(access_log_class=...)``; ``recursive``:
    its lines count cache outcomes and upstream hops (an authoritative node's have ``null`` there)."""

    node_text = _text(node)

    class NodeAccessLogger(AbstractAccessLogger):
        __slots__ = ("_second", "_sink", "_stamp")

        def __init__(self, logger: logging.Logger, log_format: str) -> None:
            super().__init__(logger, log_format)  # log_format: aiohttp's, unused (the line is JSON)
            self._second, self._stamp = -1, ""
            # Where the lines go: straight to the node's own access-log file when that is the
            # logger's one handler (nodes.shared.logs.RotatingLog.write_line), else as log records,
            # for whatever handlers an operator gave the logger.
            handlers = logger.handlers
            self._sink: Callable[[str], None] | None = (
                getattr(handlers[0], "write_line", None) if len(handlers) == 1 and not logger.filters else None
            )

        @property
        def enabled(self) -> bool:
            # aiohttp asks once per connection; False spares it even the timing of each request.
            return self.logger.isEnabledFor(logging.INFO)

        def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
            # Written out rather than json.dumps of a dict, and handed to the logger as a record made
            # here (logger.info looks up the caller's frame for every line): a line costs about a
            # quarter of what those cost (16 us instead of 57 on a loaded test machine, issue 13).
            logger = self.logger
            if not logger.isEnabledFor(logging.INFO):
                return
            stamp, self._second, self._stamp = iso_time(_wall(), self._second, self._stamp)
            hops = request.get(HOPS, 0) if recursive else None
            started = request.get(STARTED)
            seconds = time if started is None else _clock() - started
            line = (
                f'{{"time":"{stamp}","node":{node_text},"client":{_text(request.remote)},'
                f'"method":{_text(request.method)},"path":{_text(request.raw_path)},"status":{response.status},'
                f'"responseCode":{_number(response.get(RESPONSE_CODE))},"durationMs":{round(seconds * 1000, 3)!r},'
                f'"cache":{_text(request.get(CACHE))},"upstreamHops":{_number(hops)}}}'
            )
            if self._sink is not None:
                self._sink(line)
            else:
                logger.handle(logging.LogRecord(logger.name, logging.INFO, __file__, 0, line, None, None))

    return NodeAccessLogger
