"""QR codes of an identifier's resolver URL (segno): inline SVG for the page, PNG and SVG downloads."""

from __future__ import annotations

import functools
import io

import segno

__all__ = ["QR_KINDS", "qr_image"]

QR_KINDS = {"png": "image/png", "svg": "image/svg+xml"}
# Error correction M (15 % of the symbol recoverable): the usual choice for a printed label that
# may get scuffed, at a modest size for a URL of ~60 characters.
_ERROR = "m"
# Encoding a QR code costs about 5 ms of pure Python (segno), thirty times the rest of a page: codes
# are kept by URL, so a hot page costs a dict lookup. Bounded: an SVG is 3-8 kB, a PNG about 1 kB.
_FILES_KEPT = 512


@functools.lru_cache(maxsize=_FILES_KEPT)
def qr_image(url: str, kind: str) -> bytes:
    """The QR code of ``url`` as a PNG or standalone SVG file (``kind`` from ``QR_KINDS``)."""
    buffer = io.BytesIO()
    segno.make(url, error=_ERROR, micro=False).save(buffer, kind=kind, scale=8, border=4)
    return buffer.getvalue()
