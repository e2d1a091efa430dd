"""URLs of the front door: which targets count as web URLs, and the path that names an identifier."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

__all__ = ["identifier_path", "is_web_url", "strip_scheme"]

# Prefixes the Handle proxy accepts in front of a handle in the path (HDLProxy): "hdl:88.1/x" works.
_SCHEMES = ("info:hdl/", "urn:hdl:", "hdl:")


def is_web_url(text: str) -> bool:
    """An absolute http or https URL with a host: the only targets redirected to or shown as links."""
    try:
        parts = urlsplit(text.strip())
    except ValueError:  # an invalid IPv6 literal, say
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def identifier_path(handle: str) -> str:
    """``/88.118.8/VIN-1``: the identifier percent-encoded where a path needs it ("?", "#", "%",
    spaces, non-ASCII), the "/" kept (the proxy decodes the path as the REST API does)."""
    return "/" + quote(handle, safe="/:@!$&'()*+,;=-._~")


def strip_scheme(text: str) -> str:
    """The handle without a ``hdl:``-style prefix, as the Handle proxy reads its path."""
    lowered = text[:9].lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            return text[len(scheme) :]
    return text
