"""``idres up --tls``'s local CA (nodes.running.local_ca) and the TLS contexts made from a topology
(resolver.tls): certificates a verifying client accepts for the node's address, made once, made anew
when they no longer fit, keys readable by their owner only."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from nodes.running.local_ca import ensure_local_tls, local_tls, tls_dir
from resolver.config import Topology
from resolver.errors import ConfigError
from resolver.tls import client_connector, server_context
from tests.conftest import free_port, topology_of


def topology(host: str = "127.0.0.1") -> Topology:
    return topology_of(
        {
            "top": {"role": "top", "prefix": "88", "listen": f"{host}:{free_port()}"},
            "recursive": {"role": "recursive", "listen": f"{host}:{free_port()}", "root_hints": ["top"]},
        }
    )


def names_in(path: Path) -> list[object]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_a_ca_and_a_certificate_per_node_are_made_under_the_data_directory(tmp_path: Path) -> None:
    served = ensure_local_tls(topology(), tmp_path)
    folder = tls_dir(tmp_path)
    assert served.tls_ca == str(folder / "ca.pem")
    for name in ("top", "recursive"):
        spec = served.node(name)
        assert (spec.tls_cert, spec.tls_key, spec.url[:8]) == (
            str(folder / f"{name}.pem"),
            str(folder / f"{name}-key.pem"),
            "https://",
        )
        assert names_in(folder / f"{name}.pem") == [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]
    for key in folder.glob("*-key.pem"):
        assert key.stat().st_mode & 0o777 == 0o600, key


def test_files_are_reused_and_made_anew_when_they_no_longer_fit(tmp_path: Path) -> None:
    first = topology()
    ensure_local_tls(first, tmp_path)
    folder = tls_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    ensure_local_tls(first, tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "a second start makes nothing new"

    # The top node moves to another address: its certificate names it; the others stay.
    moved = Topology({**first.nodes, "top": dataclasses.replace(first.node("top"), host="10.1.2.3")})
    ensure_local_tls(moved, tmp_path)
    assert names_in(folder / "top.pem") == [x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]
    assert (folder / "recursive.pem").read_bytes() == before["recursive.pem"]

    # A new CA (its files deleted): every node certificate is issued again by it.
    (folder / "ca.pem").unlink()
    ensure_local_tls(moved, tmp_path)
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    for name in ("top", "recursive"):
        x509.load_pem_x509_certificate((folder / f"{name}.pem").read_bytes()).verify_directly_issued_by(ca)


@pytest.fixture
async def https_node(tmp_path: Path) -> AsyncIterator[tuple[Topology, str]]:
    served = ensure_local_tls(topology(), tmp_path)
    spec = served.node("top")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "secure": request.secure})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, spec.host, spec.port, ssl_context=server_context(spec)).start()
    yield served, spec.url
    await runner.cleanup()


async def test_a_client_trusting_the_local_ca_talks_to_a_node_and_others_cannot(
    https_node: tuple[Topology, str], tmp_path: Path
) -> None:
    served, url = https_node
    async with (
        aiohttp.ClientSession(connector=client_connector(served.tls_ca)) as session,
        session.get(url + "/healthz") as response,
    ):
        assert await response.json() == {"status": "ok", "secure": True}
    other = ensure_local_tls(topology(), tmp_path / "elsewhere")  # another data directory's CA
    async with aiohttp.ClientSession(connector=client_connector(other.tls_ca)) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(url + "/healthz")


def test_files_that_cannot_be_loaded_are_a_config_error_naming_them(tmp_path: Path) -> None:
    served = local_tls(topology(), tmp_path)  # nothing made
    with pytest.raises(ConfigError) as caught:
        server_context(served.node("top"))
    assert "node top: cannot load its TLS certificate" in str(caught.value)
    with pytest.raises(ConfigError) as ca:
        client_connector(served.tls_ca)
    assert "cannot load the CA certificates" in str(ca.value)


def test_nodes_started_together_share_one_ca(tmp_path: Path) -> None:
    # `idres serve --tls` of every node at once (a service manager starting them): one CA, which
    # issued every node certificate, and no temporary file left behind.
    served = topology()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: ensure_local_tls(served, tmp_path), range(8)))
    folder = tls_dir(tmp_path)
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    for name in ("top", "recursive"):
        x509.load_pem_x509_certificate((folder / f"{name}.pem").read_bytes()).verify_directly_issued_by(ca)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".lock"]
