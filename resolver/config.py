"""Frozen configuration values: size limits, node specs and the topology, parsed once at the edge.

Only the CLI and launcher read files, the environment or argv; they build these objects with
``parse_topology`` and hand them inward. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from resolver.cache import DEFAULT_CACHE_CONFIG, CacheConfig
from resolver.errors import ConfigError
from resolver.limits import DEFAULT_LIMITS, Limits
from resolver.names import is_under, parse_prefix
from resolver.upstream import DEFAULT_UPSTREAM_CONFIG, UpstreamConfig

__all__ = [
    "DEFAULT_LIMITS",
    "DURABILITY",
    "Limits",
    "NodeSpec",
    "Role",
    "Topology",
    "parse_topology",
]

CHANGE_LOG_MAX_AGE = 7 * 86400.0  # seconds a change-log entry is kept for a mirror that has not applied it

Role = Literal["top", "secondary", "enterprise", "recursive"]
ROLES: tuple[Role, ...] = ("top", "secondary", "enterprise", "recursive")
DURABILITY = ("full", "normal")  # a node's durability setting, as the SQLite synchronous level it sets


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of a topology, as the topology file describes it."""

    name: str
    role: Role
    host: str
    port: int
    prefix: str | None = None  # the prefix the node owns (None for a recursive node)
    hosts: tuple[str, ...] = ()  # derived prefixes it hosts itself rather than delegating
    mirror_of: str | None = None  # the primary this node mirrors (it then shares its prefix)
    root_hints: tuple[str, ...] = ()  # for a recursive node: the top-level nodes to start from
    # For a recursive node: servers outside the topology it may pass a client's credentials to
    # whatever prefix the tree names them for (resolver.trust; the topology's own nodes always are).
    trusted_servers: tuple[str, ...] = ()
    description: str = ""
    # A primary acknowledges a write only once a mirror has applied it (the topology's sync_mirrors).
    sync_mirrors: bool = False
    # Processes that decode and validate large POST /api/batch bodies beside the event loop (the
    # topology's batch_workers; None: the default, nodes.authoritative.batch.workers.DEFAULT_WORKERS; 0: none).
    batch_workers: int | None = None
    # A recursive node's [nodes.NAME.cache] and [nodes.NAME.upstream] tables.
    cache: CacheConfig = DEFAULT_CACHE_CONFIG
    upstream: UpstreamConfig = DEFAULT_UPSTREAM_CONFIG
    # TLS: the node serves HTTPS with this certificate chain and key (PEM files) when both are set.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Accept credentials over plain HTTP from peers that are not this machine (HANDLE.NET refuses them,
    # and so does a node unless its operator sets allow_plain_credentials), and send a client's
    # credentials over plain HTTP to the topology's nodes and trusted servers elsewhere.
    allow_plain_credentials: bool = False
    # A recursive node: processes serving its port together (SO_REUSEPORT), each with its own cache.
    workers: int = 1
    # An authoritative node: change-log entries older than this many seconds are trimmed even if a
    # mirror has not applied them (that mirror then copies a snapshot again); None: kept until every
    # mirror has applied them.
    change_log_max_age: float | None = CHANGE_LOG_MAX_AGE
    # An authoritative node: whether anyone may read its digest (/api/replication/status, .../digest);
    # by default only its operator may.
    public_digest: bool = False
    # An authoritative node: "full" syncs its SQLite file at every commit (SQLite synchronous=FULL:
    # an acknowledged write survives a power loss or an OS crash), "normal" only at checkpoints (an
    # acknowledged write survives a crash or kill of the node, not of the machine).
    durability: str = "full"
    # One JSON line per request in the node's log (nodes.shared.access_log).
    access_log: bool = True
    # The pages and proxy redirects for people (nodes.web): always on a recursive node, on an
    # authoritative node for its own identifiers only when this is set.
    front_door: bool = False
    # The address people reach the node at (e.g. https://id.example.com behind a proxy): what QR
    # codes and page links name. None: the address of each request.
    public_url: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def is_mirror(self) -> bool:
        return self.mirror_of is not None


@dataclass(frozen=True, slots=True)
class Topology:
    """All nodes by name, in file order, with the relations derived from their prefixes."""

    nodes: Mapping[str, NodeSpec] = field(default_factory=dict)
    # The CA certificates (a PEM bundle) a node verifies other nodes' HTTPS certificates against: the
    # topology's [tls] ca. None: the system's trust store.
    tls_ca: str | None = None

    def node(self, name: str) -> NodeSpec:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(self.nodes) or "none"
            raise ConfigError(f"no node named {name!r} in the topology (nodes: {known})") from None

    def primaries(self) -> list[NodeSpec]:
        """Authoritative nodes that are not mirrors."""
        return [n for n in self.nodes.values() if n.prefix is not None and not n.is_mirror]

    def mirrors_of(self, name: str) -> list[NodeSpec]:
        return [n for n in self.nodes.values() if n.mirror_of == name]

    def sites_of(self, name: str) -> list[NodeSpec]:
        """The primary first, then its mirrors: one HS_SITE value each."""
        return [self.node(name), *self.mirrors_of(name)]

    def parent_of(self, node: NodeSpec) -> NodeSpec | None:
        """The primary owning the longest proper ancestor of ``node``'s prefix: where it is delegated."""
        if node.prefix is None or node.is_mirror:
            return None
        best: NodeSpec | None = None
        for other in self.primaries():
            assert other.prefix is not None
            if (
                other.prefix != node.prefix
                and is_under(node.prefix, other.prefix)
                and (best is None or len(other.prefix) > len(best.prefix or ""))
            ):
                best = other
        return best

    def roots(self) -> list[NodeSpec]:
        """Top-level primaries and their mirrors: where resolution starts."""
        tops = [n for n in self.primaries() if self.parent_of(n) is None]
        return [site for top in tops for site in self.sites_of(top.name)]


def _prefix(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'{where}: prefix must be a string like "88.118", not {value!r}')
    try:
        return parse_prefix(value)
    except Exception as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _listen(value: Any, where: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f'{where}: listen must be "HOST:PORT", not {value!r}')
    host, _, port_text = value.rpartition(":")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: port {port_text!r} is not a TCP port number")
    return host, int(port_text)


def _server_urls(value: Any, where: str) -> tuple[str, ...]:
    """Base URLs like ``http://10.0.0.5:8100``: a scheme, a host and nothing after the port."""
    urls = _str_list(value, where)
    for url in urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ConfigError(f'{where}: {url!r} is not a server URL like "http://10.0.0.5:8100"')
    return urls


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, not {value!r}")
    return tuple(value)


_Settings = TypeVar("_Settings", CacheConfig, UpstreamConfig)


def _settings(kind: type[_Settings], raw: Any, where: str) -> _Settings:
    """A frozen settings object from a TOML table of numbers; unknown keys and bad values are named."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table of settings")
    known = {f.name for f in fields(kind)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown settings {sorted(unknown)} (known: {sorted(known)})")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
    try:
        return kind(**raw)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _node(name: str, raw: Any) -> NodeSpec:
    where = f"node {name!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {
        "role",
        "prefix",
        "listen",
        "hosts",
        "mirror_of",
        "root_hints",
        "trusted_servers",
        "description",
        "sync_mirrors",
        "batch_workers",
        "cache",
        "upstream",
        "tls_cert",
        "tls_key",
        "allow_plain_credentials",
        "workers",
        "change_log_max_age",
        "public_digest",
        "durability",
        "access_log",
        "front_door",
        "public_url",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    host, port = _listen(raw.get("listen"), where)
    mirror_of = raw.get("mirror_of")
    if mirror_of is not None:
        if not isinstance(mirror_of, str):
            raise ConfigError(f"{where}: mirror_of must be the name of a node, not {mirror_of!r}")
        inherited = sorted({"role", "prefix", "hosts", "root_hints", "sync_mirrors"} & set(raw))
        if inherited:
            raise ConfigError(
                f"{where}: a mirror takes its role, prefix and hosts from its primary (and "
                f"sync_mirrors is set there); remove {', '.join(inherited)}"
            )
    role = raw.get("role", "top" if mirror_of else None)
    if role not in ROLES:
        raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
    sync_mirrors = raw.get("sync_mirrors", False)
    if not isinstance(sync_mirrors, bool):
        raise ConfigError(f"{where}: sync_mirrors must be true or false, not {sync_mirrors!r}")
    batch_workers = raw.get("batch_workers")
    if batch_workers is not None and (type(batch_workers) is not int or not 0 <= batch_workers <= 64):
        raise ConfigError(f"{where}: batch_workers must be a number of processes from 0 to 64, not {batch_workers!r}")
    tls = _tls(raw, where)
    workers = raw.get("workers", 1)
    if type(workers) is not int or not 1 <= workers <= 64:
        raise ConfigError(f"{where}: workers must be a number of processes from 1 to 64, not {workers!r}")
    max_age = raw.get("change_log_max_age", CHANGE_LOG_MAX_AGE)
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0):
        raise ConfigError(f"{where}: change_log_max_age must be a number of seconds above 0, not {max_age!r}")
    public_digest = raw.get("public_digest", False)
    if not isinstance(public_digest, bool):
        raise ConfigError(f"{where}: public_digest must be true or false, not {public_digest!r}")
    access_log = raw.get("access_log", True)
    if not isinstance(access_log, bool):
        raise ConfigError(f"{where}: access_log must be true or false, not {access_log!r}")
    front_door = raw.get("front_door", False)
    if not isinstance(front_door, bool):
        raise ConfigError(f"{where}: front_door must be true or false, not {front_door!r}")
    public_url = raw.get("public_url")
    if public_url is not None and (
        not isinstance(public_url, str) or not public_url.startswith(("http://", "https://")) or " " in public_url
    ):
        raise ConfigError(f"{where}: public_url must be an http:// or https:// address, not {public_url!r}")
    durability = raw.get("durability", "full")
    if durability not in DURABILITY:
        raise ConfigError(f"{where}: durability must be one of {', '.join(DURABILITY)}, not {durability!r}")
    if role == "recursive":
        if "prefix" in raw or "sync_mirrors" in raw or "batch_workers" in raw:
            raise ConfigError(f"{where}: a recursive node owns no prefix, has no mirrors and takes no batches")
        if "change_log_max_age" in raw or "public_digest" in raw or "durability" in raw or "front_door" in raw:
            raise ConfigError(
                f"{where}: change_log_max_age, public_digest, durability and front_door belong to authoritative nodes"
                " (a recursive node always has its front door)"
            )
        hints = _str_list(raw.get("root_hints", []), f"{where} root_hints")
        return NodeSpec(
            name,
            role,
            host,
            port,
            root_hints=hints,
            trusted_servers=_server_urls(raw.get("trusted_servers", []), f"{where} trusted_servers"),
            description=str(raw.get("description", "")),
            cache=_settings(CacheConfig, raw.get("cache", {}), f"{where} cache"),
            upstream=_settings(UpstreamConfig, raw.get("upstream", {}), f"{where} upstream"),
            workers=workers,
            access_log=access_log,
            public_url=public_url.rstrip("/") if public_url else None,
            **tls,
        )
    if "cache" in raw or "upstream" in raw or "trusted_servers" in raw or "workers" in raw:
        raise ConfigError(f"{where}: cache, upstream, trusted_servers and workers settings belong to recursive nodes")
    prefix = None if mirror_of else _prefix(raw.get("prefix"), where)
    hosts = tuple(_prefix(h, f"{where} hosts") for h in _str_list(raw.get("hosts", []), where))
    for hosted in hosts:
        if prefix is not None and (hosted == prefix or not is_under(hosted, prefix)):
            raise ConfigError(f"{where}: hosted prefix {hosted} is not derived from {prefix}")
    return NodeSpec(
        name,
        role,
        host,
        port,
        prefix=prefix,
        hosts=hosts,
        mirror_of=mirror_of if isinstance(mirror_of, str) else None,
        description=str(raw.get("description", "")),
        sync_mirrors=sync_mirrors,
        batch_workers=batch_workers,
        change_log_max_age=None if max_age is None else float(max_age),
        public_digest=public_digest,
        durability=durability,
        access_log=access_log,
        front_door=front_door,
        public_url=public_url.rstrip("/") if public_url else None,
        **tls,
    )


def parse_topology(raw: Mapping[str, Any]) -> Topology:
    """Build and check a topology from the parsed TOML document (``[nodes.NAME]`` tables)."""
    tables = raw.get("nodes")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError("the topology has no [nodes.NAME] tables")
    unknown = set(raw) - {"nodes", "tls"}
    if unknown:
        raise ConfigError(f"unknown tables {sorted(unknown)} (known: nodes, tls)")
    nodes = {name: _node(name, spec) for name, spec in tables.items()}
    # A mirror serves its primary's prefix and role.
    for name, node in list(nodes.items()):
        if node.mirror_of is None:
            continue
        primary = nodes.get(node.mirror_of)
        if primary is None or primary.is_mirror or primary.prefix is None:
            raise ConfigError(f"node {name!r}: mirror_of {node.mirror_of!r} is not an authoritative primary")
        nodes[name] = NodeSpec(
            name,
            primary.role,
            node.host,
            node.port,
            prefix=primary.prefix,
            hosts=primary.hosts,
            mirror_of=primary.name,
            description=node.description,
            batch_workers=node.batch_workers,  # a promoted mirror takes batches too
            tls_cert=node.tls_cert,
            tls_key=node.tls_key,
            allow_plain_credentials=node.allow_plain_credentials,
            change_log_max_age=node.change_log_max_age,
            public_digest=node.public_digest,
            durability=node.durability,
            access_log=node.access_log,
            front_door=node.front_door,
            public_url=node.public_url,
        )
    seen: dict[tuple[str, int], str] = {}
    owners: dict[str, str] = {}
    for node in nodes.values():
        if (node.host, node.port) in seen:
            raise ConfigError(
                f"nodes {seen[(node.host, node.port)]!r} and {node.name!r} both listen on {node.host}:{node.port}"
            )
        seen[(node.host, node.port)] = node.name
        if node.sync_mirrors and not any(n.mirror_of == node.name for n in nodes.values()):
            raise ConfigError(f"node {node.name!r}: sync_mirrors is set but no node has mirror_of = {node.name!r}")
        if node.prefix is not None and not node.is_mirror:
            for p in (node.prefix, *node.hosts):
                if p in owners:
                    raise ConfigError(f"prefix {p} is claimed by both {owners[p]!r} and {node.name!r}")
                owners[p] = node.name
        for hint in node.root_hints:
            if hint not in nodes:
                raise ConfigError(f"node {node.name!r}: root hint {hint!r} is not a node of the topology")
    return Topology(nodes, tls_ca=_tls_ca(raw.get("tls", {})))


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be the path of a PEM file, not {value!r}")
    return value


def _tls(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A node's tls_cert, tls_key and allow_plain_credentials, checked."""
    cert, key = raw.get("tls_cert"), raw.get("tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: tls_cert and tls_key go together (the certificate chain and its private key)")
    allow = raw.get("allow_plain_credentials", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where}: allow_plain_credentials must be true or false, not {allow!r}")
    return {
        "tls_cert": None if cert is None else _path(cert, f"{where}: tls_cert"),
        "tls_key": None if key is None else _path(key, f"{where}: tls_key"),
        "allow_plain_credentials": allow,
    }


def _tls_ca(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        raise ConfigError("[tls] must be a table")
    unknown = set(raw) - {"ca"}
    if unknown:
        raise ConfigError(f"[tls]: unknown keys {sorted(unknown)} (known: ca)")
    return None if "ca" not in raw else _path(raw["ca"], "[tls] ca")
