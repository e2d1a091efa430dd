"""Values the storage tests write: one of every data format, and simple URL records."""

from __future__ import annotations

from resolver.values import HandleValue, value_from_wire

__all__ = ["EVERY_FORMAT", "NOW", "url", "wire"]

NOW = 1_700_000_000


def wire(raw: dict[str, object]) -> HandleValue:
    return value_from_wire(raw, position=1, now=NOW)


def url(n: int | str, index: int = 1) -> tuple[HandleValue, ...]:
    return (HandleValue(index, "URL", "string", f"https://example.org/{n}", timestamp=NOW),)


EVERY_FORMAT: tuple[HandleValue, ...] = (
    wire(
        {
            "index": 1,
            "type": "URL",
            "data": {"format": "string", "value": "https://example.org/车架号"},
            "ttl": 3600,
            "references": [{"index": 300, "handle": "88.118.8/other"}],
        }
    ),
    wire({"index": 2, "type": "CERT", "data": {"format": "base64", "value": "AAEC/w=="}}),
    wire(
        {
            "index": 3,
            "type": "HASH",
            "data": {"format": "hex", "value": "00ff10"},
            "permissions": "1100",
        }
    ),
    wire(
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "0.NA/88.118.8", "index": 200, "permissions": "011111110011"},
            },
        }
    ),
    wire(
        {
            "index": 200,
            "type": "HS_VLIST",
            "data": {
                "format": "vlist",
                "value": [
                    {"handle": "88.118.8/admin1", "index": 300},
                    {"handle": "88.118.8/admin2", "index": 301},
                ],
            },
        }
    ),
    wire(
        {
            "index": 1000,
            "type": "HS_SITE",
            "data": {
                "format": "site",
                "value": {
                    "servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "http", "port": 8000}]}],
                    "attributes": [{"name": "desc", "value": "primary"}],
                },
            },
        }
    ),
)
