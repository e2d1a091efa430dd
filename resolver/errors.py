"""One error hierarchy for the whole service, each error carrying its Handle responseCode and HTTP status.

The codes and statuses follow the HANDLE.NET REST API (Technical Manual §14.4 and the server's
``statusCodeFromResponse``)::

    HandleError (2, 500)                      every error the service raises on purpose
    ├── ProtocolError (4, 400)                a request the API cannot read (bad JSON, bad parameter)
    │   ├── UnsupportedMediaType (4, 415)
    │   ├── BodyTooLarge (4, 413)
    │   └── MethodNotAllowed (4, 405)         also an unknown endpoint, as HANDLE.NET answers
    ├── NotSupported (5, 501)
    ├── ServerBusy (3, 503)
    │   └── TooManyRequests (3, 429)          too many failed logins: ``retry_after`` seconds to wait
    ├── ReadOnly (7, 503)                     a mirror asked to write
    ├── NotReplicated (2, 503)                sync_mirrors: committed here, no mirror confirmed it in time
    ├── HandleNotFound (100, 404)             only on writes: resolution answers "not found", it does not raise
    ├── HandleAlreadyExists (101, 409)
    ├── InvalidHandle (102, 400)
    ├── ValuesNotFound (200, 400)
    ├── ValueAlreadyExists (201, 409)
    ├── InvalidValue (202, 400)
    ├── NotResponsible (301, 400)
    ├── AuthenticationNeeded (402, 401)
    ├── AuthenticationFailed (403, 401)
    ├── PermissionDenied (401, 403)
    ├── UpstreamError (2, 502)                every upstream failed; ``attempts`` says what each one said,
    │                                         each an ``Attempt`` whose ``FailureKind`` code matches on
    └── ReplicationError (2, 502)             the node a mirror follows sent something it cannot apply

An ``aiohttp`` middleware in ``nodes.shared.http_api`` turns any of these into a response; foreign exceptions are
translated where they enter (``raise X(...) from exc``): aiohttp, socket and timeout errors of an
upstream exchange in ``resolver.client``, once, into an ``UpstreamError`` with the kind of failure.
Two more roots are never an answer to a request::

    ConfigError                               a topology or node configuration that cannot be used:
                                              it stops a node or a command at startup
    BulkError                                 the bulk-registration client (``idres register``) stops
    ├── InputError                            the input file cannot be read at all: nothing is sent
    └── FatalError                            registration cannot go on (bad credentials, a mirror, an
                                              unreachable server, a changed file); a resume goes on
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Attempt",
    "AuthenticationFailed",
    "AuthenticationNeeded",
    "BodyTooLarge",
    "BulkError",
    "ConfigError",
    "FailureKind",
    "FatalError",
    "HandleAlreadyExists",
    "HandleError",
    "HandleNotFound",
    "InputError",
    "InvalidHandle",
    "InvalidValue",
    "MethodNotAllowed",
    "NotReplicated",
    "NotResponsible",
    "NotSupported",
    "PermissionDenied",
    "ProtocolError",
    "ReadOnly",
    "ReplicationError",
    "ServerBusy",
    "TooManyRequests",
    "UnsupportedMediaType",
    "UpstreamError",
    "ValueAlreadyExists",
    "ValuesNotFound",
]


class HandleError(Exception):
    """Base class: an error with a Handle ``responseCode``, an HTTP status and a message for people."""

    response_code: ClassVar[int] = 2
    http_status: ClassVar[int] = 500
    retry_after: int | None = None
    """Whole seconds the client should wait before trying again (the ``Retry-After`` header), when known."""

    def __init__(self, message: str, *, handle: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.handle = handle

    def to_body(self) -> dict[str, object]:
        """The JSON body HANDLE.NET sends for this error."""
        body: dict[str, object] = {"responseCode": self.response_code}
        if self.handle is not None:
            body["handle"] = self.handle
        body["message"] = self.message
        return body


class ProtocolError(HandleError):
    response_code = 4
    http_status = 400


class UnsupportedMediaType(ProtocolError):
    http_status = 415


class BodyTooLarge(ProtocolError):
    http_status = 413


class MethodNotAllowed(ProtocolError):
    http_status = 405


class NotSupported(HandleError):
    response_code = 5
    http_status = 501


class ServerBusy(HandleError):
    response_code = 3
    http_status = 503


class TooManyRequests(ServerBusy):
    """Too many failed logins from one client or for one identity (``nodes.authoritative.login_limits``).

    HANDLE.NET has no code for a rate limit; 3 ("server too busy") is its "try again later", which a
    client already treats as transient, whereas 403 would say the secret is wrong. HTTP says which:
    429 with ``Retry-After`` (RFC 6585 §4)."""

    http_status = 429

    def __init__(self, message: str, *, retry_after: int, handle: str | None = None) -> None:
        super().__init__(message, handle=handle)
        self.retry_after = retry_after


class ReadOnly(HandleError):
    response_code = 7
    http_status = 503


class NotReplicated(HandleError):
    """sync_mirrors: the write committed on this node, but no mirror confirmed it in time."""

    response_code = 2
    http_status = 503


class HandleNotFound(HandleError):
    response_code = 100
    http_status = 404


class HandleAlreadyExists(HandleError):
    response_code = 101
    http_status = 409


class InvalidHandle(HandleError):
    response_code = 102
    http_status = 400


class ValuesNotFound(HandleError):
    response_code = 200
    http_status = 400


class ValueAlreadyExists(HandleError):
    response_code = 201
    http_status = 409


class InvalidValue(HandleError):
    response_code = 202
    http_status = 400


class NotResponsible(HandleError):
    response_code = 301
    http_status = 400


class AuthenticationNeeded(HandleError):
    response_code = 402
    http_status = 401


class CredentialsNeedTLS(AuthenticationNeeded):
    """Credentials sent over plain HTTP from another machine: HANDLE.NET ignores them and answers 403
    where it would ask for authentication; so does a node, unless its operator allows plain HTTP."""

    http_status = 403


class AuthenticationFailed(HandleError):
    response_code = 403
    http_status = 401


class PermissionDenied(HandleError):
    response_code = 401
    http_status = 403


class FailureKind(enum.Enum):
    """Why one try of an upstream server failed: code matches on the kind, people read the reason."""

    CANNOT_CONNECT = "cannot connect"
    """No connection: refused, unreachable, or the name does not resolve."""
    CONNECTION_LOST = "connection lost"
    """Connected, but the exchange broke off (reset, closed before the answer)."""
    TIMEOUT = "timed out"
    """No answer within the try's timeout."""
    SERVER_ERROR = "server error"
    """An HTTP 5xx answer."""
    BAD_ANSWER = "bad answer"
    """An answer that cannot be read or that this request cannot use (malformed, unexpected status)."""
    NOT_RESPONSIBLE = "not responsible"
    """400/301: the server does not serve the prefix (a lame delegation, or an unregistered prefix)."""
    BAD_REFERRAL = "bad referral"
    """A referral that loops, points elsewhere, or names no HTTP server."""
    READ_ONLY = "read-only"
    """A mirror refused a write (503/7)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed try: the server asked, the kind of failure, and what it said (for people)."""

    server: str
    kind: FailureKind
    reason: str

    def __str__(self) -> str:
        return f"{self.server}: {self.reason}"


class UpstreamError(HandleError):
    """Every upstream that was tried failed; ``attempts`` lists each try, in order (dnspython's
    ``NoNameservers``). The message ends with what each server said."""

    response_code = 2
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        handle: str | None = None,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        if attempts:
            message = message + ": " + "; ".join(str(attempt) for attempt in attempts)
        super().__init__(message, handle=handle)
        self.attempts = tuple(attempts)

    @classmethod
    def one(cls, server: str, kind: FailureKind, reason: str, *, what: str | None = None) -> UpstreamError:
        """The error of a single failed exchange with ``server`` (``what`` was asked of it)."""
        return cls(f"{what or server} failed", attempts=[Attempt(server, kind, reason)])


class ReplicationError(HandleError):
    """The node a mirror follows sent something it cannot apply (a bad item, epoch or sequence)."""

    response_code = 2
    http_status = 502


class ConfigError(Exception):
    """A topology or node configuration that cannot be used; raised at startup, never per request."""


class BulkError(Exception):
    """The bulk-registration client cannot go on; its message is for the person running it."""


class InputError(BulkError):
    """The input file cannot be read at all (a bad CSV header, an empty file): nothing is sent."""


class FatalError(BulkError):
    """Registration cannot go on: bad credentials, a mirror, an unreachable server, a changed file."""
