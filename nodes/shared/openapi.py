"""The OpenAPI description of the REST API, loaded once from the packaged YAML and served as JSON."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

__all__ = ["openapi_document", "openapi_handler"]


@functools.cache
def _document_bytes() -> bytes:
    return json.dumps(openapi_document(), separators=(",", ":")).encode()


def openapi_document() -> dict[str, Any]:
    """The description as a dict (nodes/shared/openapi.yaml; docs/openapi.yaml is the same file)."""
    text = resources.files("nodes.shared").joinpath("openapi.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``: the description, serialised once per process."""
    return web.Response(body=_document_bytes(), content_type="application/json")
