"""The grid's identities: one certificate authority per grid, one certificate per node.

A node's certificate has CN = node id. Its broker presents it on the grid listener (peers check
that the CN is the node their view names) and its governance unit presents it when it writes to
a neighbour's broker (that broker takes the CN as the username, and its ACL confines the peer to
topics that end in that name). So no shared grid password exists, and a member can only speak
in its own name.

X.509 through `cryptography` (maintained, no shelling out, the same code on every platform);
keys are ECDSA P-256 (small, fast handshakes on gateway hardware). Layout under a state dir:

    pki/ca.crt  pki/ca.key          the grid CA (keep ca.key off the nodes in production)
    pki/NODE.crt  pki/NODE.key      one node's identity
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from redy.errors import BrokerError
from redy.topics import check_id

CA_DAYS = 3650
CERT_DAYS = 825  # the CA/Browser Forum's former maximum; renew with `redy grid cert issue`


@attrs.frozen
class Identity:
    """Paths of a node's TLS identity and of the grid CA that signed it."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """TLS 1.2+ client context: verifies the peer against the grid CA (and the host name
        against its SANs) and presents our certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def pki_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "pki"


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `path` atomically (a reader never sees half a file), with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    _write_private(path, data, 0o644)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ReDy Grid"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[Path]:
    """The grid's pki/ folder, held exclusively: launches, threads and terminals that create
    the CA or a certificate at the same moment do it one after another, never half each."""
    d = pki_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield d
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_ca(state_dir: Path, name: str = "redy-grid-ca") -> tuple[Path, Path]:
    """The grid CA's certificate and key under `state_dir/pki`, created on first use."""
    with _locked(state_dir) as d:
        return _ensure_ca(d, name)


def _ensure_ca(d: Path, name: str) -> tuple[Path, Path]:
    crt, key_path = d / "ca.crt", d / "ca.key"
    if crt.exists():
        if not key_path.exists():
            raise BrokerError(
                f"{crt} has no key beside it: this host holds the grid CA's certificate only;"
                " issue certificates where ca.key is (redy grid cert issue NODE --host ADDR)"
            )
        return crt, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(crt, cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def _load_ca(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path = _ensure_ca(pki_dir(state_dir), "redy-grid-ca")
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BrokerError(f"{key_path}: expected an EC private key (made by redy grid ca init)")
    return cert, key


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):  # keep order, drop repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def cert_hosts(path: Path) -> set[str]:
    """The host names and addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def issue(state_dir: Path, name: str, hosts: list[str]) -> Identity:
    """Issue (or renew) `name`'s certificate, CN = name, valid for `hosts` (its advertised
    addresses and host names), usable as TLS server and client."""
    check_id(name, "node")
    with _locked(state_dir):
        return _issue(state_dir, name, hosts)


def _issue(state_dir: Path, name: str, hosts: list[str]) -> Identity:
    ca_cert, ca_key = _load_ca(state_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    d = pki_dir(state_dir)
    _write_private(d / f"{name}.key", _key_pem(key))
    _write_public(d / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return identity(state_dir, name)


def identity(state_dir: Path, name: str) -> Identity:
    d = pki_dir(state_dir)
    return Identity(ca=d / "ca.crt", cert=d / f"{name}.crt", key=d / f"{name}.key")


def ensure_identity(state_dir: Path, name: str, hosts: list[str]) -> Identity:
    """`name`'s identity, issued on first use or when it no longer covers `hosts`.

    On a gateway that holds the grid CA's certificate but not its key (a certificate issued
    elsewhere by `redy grid cert issue`), the certificate only has to cover `hosts[0]`, the
    address peers dial; the others are loopback conveniences that need no new certificate."""
    check_id(name, "node")
    ident = identity(state_dir, name)
    with _locked(state_dir):
        have = ident.cert.exists() and ident.key.exists() and ident.ca.exists()
        if have and set(hosts) <= cert_hosts(ident.cert):
            return ident
        if have and not has_ca_key(state_dir):
            if not hosts or hosts[0] in cert_hosts(ident.cert):
                return ident
            raise BrokerError(
                f"{ident.cert} is not valid for {hosts[0]}, the address peers dial; issue it"
                f" where the grid CA's key is: redy grid cert issue {name} --host {hosts[0]}"
            )
        return _issue(state_dir, name, hosts)


def has_ca_key(state_dir: Path) -> bool:
    """Whether this state dir holds the grid CA's key (it can issue certificates)."""
    return (pki_dir(state_dir) / "ca.key").exists()


def common_name(der: bytes) -> str | None:
    """The CN of a DER certificate (what `ssl.SSLObject.getpeercert(binary_form=True)` gives)."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


# --- command line ----------------------------------------------------------------------------

_STATE = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".redy",
    show_default=True,
    help="Where the grid's pki/ folder lives.",
)


@click.group("ca")
def ca() -> None:
    """The grid's certificate authority."""


@ca.command("init")
@_STATE
def ca_init(state_dir: str) -> None:
    """Create the grid CA (pki/ca.crt, pki/ca.key) if there is none."""
    crt, key = ensure_ca(Path(state_dir))
    click.echo(f"grid CA: {crt} (key {key}, keep it off the nodes)")


@click.group("cert")
def cert() -> None:
    """Node certificates signed by the grid CA."""


@cert.command("issue")
@click.argument("node")
@_STATE
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="An address or host name peers dial this node at (repeatable); default 127.0.0.1.",
)
def cert_issue(node: str, state_dir: str, hosts: tuple[str, ...]) -> None:
    """Issue NODE's certificate (CN = NODE) for its advertised addresses."""
    ident = issue(Path(state_dir), node, list(hosts) or ["127.0.0.1"])
    click.echo(f"{node}: {ident.cert} and {ident.key} (CA {ident.ca})")


def common_name_of(path: Path) -> str | None:
    """The CN of a PEM certificate file."""
    names = x509.load_pem_x509_certificate(path.read_bytes()).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )
    return str(names[0].value) if names else None
