"""``idres up --tls``: a local certificate authority and a certificate per node, under the data directory.

The CA (``DATA/tls/ca.pem``, its key beside it) signs one certificate per node (``DATA/tls/NAME.pem``
and ``NAME-key.pem``) naming the address the node listens on; clients trust ``ca.pem`` (``curl
--cacert``, ``idres resolve --cacert``, the nodes themselves through the topology's ``[tls] ca``).
Files are made once and reused; a node certificate is made anew when it is missing, no longer names
the node's address or is within ``RENEW_BEFORE`` of its end. Keys are written readable by their
owner only. An operator with certificates of their own sets them in the topology instead.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodes.running.topology_file import with_tls_files
from resolver.config import NodeSpec, Topology

__all__ = ["CA_FILE", "ensure_local_tls", "local_tls", "tls_dir"]

CA_FILE = "ca.pem"
CA_DAYS = 3650
NODE_DAYS = 397  # what browsers accept for a server certificate
RENEW_BEFORE = datetime.timedelta(days=30)

_Key = ec.EllipticCurvePrivateKey
_Name = x509.DNSName | x509.IPAddress


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def _node_files(data_dir: Path, name: str) -> tuple[Path, Path]:
    return tls_dir(data_dir) / f"{name}.pem", tls_dir(data_dir) / f"{name}-key.pem"


def local_tls(topology: Topology, data_dir: Path) -> Topology:
    """``topology`` on HTTPS with the local CA's files under ``data_dir`` (made by ``ensure_local_tls``)."""
    files = {name: _node_files(data_dir, name) for name in topology.nodes}
    return with_tls_files(topology, tls_dir(data_dir) / CA_FILE, files)


def ensure_local_tls(topology: Topology, data_dir: Path) -> Topology:
    """Make whatever CA and node files are missing or due, and return ``local_tls(topology, data_dir)``.

    Under an exclusive lock on ``DATA/tls/.lock``: nodes started together with ``idres serve --tls``
    (by hand, or a service manager) never make two CAs; each file is replaced whole (written beside
    it, then renamed), so a node never reads half of one."""
    folder = tls_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_cert, ca_key = _ensure_ca(folder)
        for spec in topology.nodes.values():
            cert_path, key_path = _node_files(data_dir, spec.name)
            if not _still_good(cert_path, key_path, _names(spec), ca_cert):
                key = ec.generate_private_key(ec.SECP256R1())
                cert = _node_certificate(spec, key, ca_cert, ca_key)
                _write_key(key_path, key)
                _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return local_tls(topology, data_dir)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """``data`` in ``path``, replaced whole: written to a new file beside it (made with ``mode``), then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_key(path: Path, key: _Key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600)


def _ensure_ca(folder: Path) -> tuple[x509.Certificate, _Key]:
    cert_path, key_path = folder / CA_FILE, folder / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - RENEW_BEFORE > _now():
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"idres local CA {folder.resolve()}"[:64])])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _names(spec: NodeSpec) -> list[_Name]:
    """The names a node's certificate carries: its listen address, and this machine's names when it
    listens on loopback or on every address (0.0.0.0, ::)."""
    names: list[_Name] = []
    try:
        address = ipaddress.ip_address(spec.host.strip("[]"))
    except ValueError:
        names.append(x509.DNSName(spec.host))
    else:
        if not address.is_unspecified:
            names.append(x509.IPAddress(address))
        if address.is_loopback or address.is_unspecified:
            names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    return list(dict.fromkeys(names))


def _still_good(cert_path: Path, key_path: Path, names: list[_Name], ca_cert: x509.Certificate) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        held = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca_cert)  # not one of an earlier CA's
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > _now() and all(n in held for n in names)


def _node_certificate(spec: NodeSpec, key: _Key, ca_cert: x509.Certificate, ca_key: _Key) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(spec)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
