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
    pki/operator.crt  .key          this host's operator (a person, CN operator.PERSON)

The CA also states in each certificate what its holder is (`Grant`, a non-critical X.509
extension under our own OID): its role ('node': a member of the grid; 'operator': a person who
reads, never a member) and, for a node, its connection limits (import and export kW). Every
node holds every other node's offers to the limits in the signer's certificate, so a member
can bid no more than its connection takes; a node cannot raise its own limits, since the
certificate is signed by the CA.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import math
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

from redy.errors import BrokerError, RedyError
from redy.topics import check_id

CA_DAYS = 3650
CERT_DAYS = 825  # the CA/Browser Forum's former maximum; renew with `redy grid cert issue`

# Names no node may take: the brokers' own accounts, and the prefix of operators' names.
RESERVED_NAMES = ("governance", "operator", "grid")
ROLES = ("node", "operator")
# The grant's extension: an OID of the 2.25 arc (a UUID as an integer, ITU-T X.667), which
# needs no registration. Its value is a DER UTF8String holding compact JSON.
GRANT_OID = x509.ObjectIdentifier("2.25.313811244419059170178086927988114540122")
_GRANT_MAX_BYTES = 1024


@attrs.frozen
class Grant:
    """What the grid CA states about a certificate's holder: its role and, for a node, its
    connection limits in kW (None: not stated; the grid-wide bound `capacity_kw` then holds).

    `import_kw` is the most the node may draw from the grid, `export_kw` the most it may feed
    in; an offer's net injection must stay within -import_kw..export_kw."""

    role: str = "node"
    import_kw: float | None = None
    export_kw: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.role not in ROLES:
            raise RedyError(f"role {self.role!r}: expected one of {', '.join(ROLES)}")
        for what, kw in (("import_kw", self.import_kw), ("export_kw", self.export_kw)):
            if kw is not None and not (math.isfinite(kw) and 0 <= kw <= 1e9):
                raise RedyError(f"{what} {kw!r}: expected a number of kW from 0 to 1e9")

    @property
    def limited(self) -> bool:
        return self.import_kw is not None and self.export_kw is not None

    def bounds_kw(self, capacity_kw: float) -> tuple[float, float]:
        """The net injection an offer of this holder may span (kW): -import..export, each
        limit not stated taken as the grid-wide bound."""
        lo = capacity_kw if self.import_kw is None else min(self.import_kw, capacity_kw)
        hi = capacity_kw if self.export_kw is None else min(self.export_kw, capacity_kw)
        return -lo, hi

    def describe(self) -> str:
        if self.role != "node":
            return f"role {self.role}"
        if not self.limited:
            return "role node, no limits stated"
        return f"role node, import {self.import_kw:g} kW, export {self.export_kw:g} kW"

    def to_der(self) -> bytes:
        body: dict[str, object] = {"role": self.role}
        if self.import_kw is not None:
            body["import_kw"] = self.import_kw
        if self.export_kw is not None:
            body["export_kw"] = self.export_kw
        text = json.dumps(body, separators=(",", ":")).encode()
        n = len(text)
        length = bytes([n]) if n < 0x80 else bytes([0x82, n >> 8, n & 0xFF])
        return b"\x0c" + length + text  # UTF8String

    @classmethod
    def from_der(cls, der: bytes) -> Grant:
        """The grant an extension value states; RedyError if it is not one."""
        if len(der) < 2 or len(der) > _GRANT_MAX_BYTES or der[0] != 0x0C:
            raise RedyError("the grant extension is not a UTF8String")
        if der[1] < 0x80:
            n, start = der[1], 2
        elif der[1] == 0x81 and len(der) >= 3:
            n, start = der[2], 3
        elif der[1] == 0x82 and len(der) >= 4:
            n, start = (der[2] << 8) | der[3], 4
        else:
            raise RedyError("the grant extension has a length it cannot have")
        if start + n != len(der):
            raise RedyError("the grant extension's length does not match its value")
        try:
            body = json.loads(der[start:])
        except ValueError:
            raise RedyError("the grant extension is not JSON") from None
        if not isinstance(body, dict) or not set(body) <= {"role", "import_kw", "export_kw"}:
            raise RedyError("the grant extension: expected role, import_kw, export_kw")
        values = [body.get(k) for k in ("import_kw", "export_kw")]
        if not isinstance(body.get("role"), str) or any(
            v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
            for v in values
        ):
            raise RedyError("the grant extension: expected a role and numbers of kW")
        return cls(body["role"], *(None if v is None else float(v) for v in values))


def grant_of(cert: x509.Certificate) -> Grant:
    """What the CA states in `cert`: its grant, or for a certificate with none (issued before
    grants) a node with no stated limits. RedyError if the extension is there but unreadable."""
    try:
        ext = cert.extensions.get_extension_for_oid(GRANT_OID)
    except x509.ExtensionNotFound:
        return Grant()
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise RedyError("the grant extension is not ours")
    return Grant.from_der(value.value)


def member_refusal(name: str | None, grant: Grant) -> str | None:
    """Why a certificate's holder is no member of the grid (None: it is): only a node's
    certificate makes a member, and never under a reserved name."""
    if grant.role != "node":
        return f"a certificate of role {grant.role}, not a node"
    if name is None or name in RESERVED_NAMES:
        return f"a certificate of the reserved name {name!r}"
    return None


def operator_name(person: str) -> str:
    """The CN of a person's operator certificate: `operator.PERSON`. The dot is in no node id,
    so no receiver takes an operator's write as a member's (topic levels must be node ids)."""
    check_id(person, "person")
    return f"operator.{person}"


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


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `path` atomically (a reader never sees half a file), with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    write_private(path, data, 0o644)


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
    write_private(key_path, _key_pem(key))
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


def _check_holder(name: str, grant: Grant) -> None:
    if grant.role == "operator":
        if not name.startswith("operator.") or "." in name[len("operator.") :]:
            raise BrokerError(f"operator certificate {name!r}: expected operator.PERSON")
        check_id(name[len("operator.") :], "person")
        return
    check_id(name, "node")
    if name in RESERVED_NAMES:
        raise BrokerError(
            f"{name!r} is a reserved name ({', '.join(RESERVED_NAMES)}): no node may take it;"
            " an operator's certificate is `redy grid cert operator PERSON`"
        )


def issue(state_dir: Path, name: str, hosts: list[str], grant: Grant | None = None) -> Identity:
    """Issue (or renew) `name`'s certificate, CN = name, valid for `hosts` (its advertised
    addresses and host names), usable as TLS server and client, with the CA's `grant` (a node
    with no stated limits by default)."""
    grant = grant or Grant()
    _check_holder(name, grant)
    with _locked(state_dir):
        return _issue(state_dir, name, hosts, grant)


def issue_operator(state_dir: Path, person: str) -> Identity:
    """Issue `person`'s operator certificate (CN operator.PERSON, client only, role operator)
    as pki/operator.crt and .key: for this host's operator tools, never for a gateway."""
    name = operator_name(person)
    with _locked(state_dir):
        return _issue(state_dir, name, [], Grant("operator"), file="operator")


def _issue(
    state_dir: Path, name: str, hosts: list[str], grant: Grant, file: str | None = None
) -> Identity:
    ca_cert, ca_key = _load_ca(state_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if grant.role == "node":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        # Not critical: TLS stacks (Mosquitto's OpenSSL) must accept a certificate they do
        # not understand all of; our own code reads it.
        .add_extension(x509.UnrecognizedExtension(GRANT_OID, grant.to_der()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    d = pki_dir(state_dir)
    file = file or name
    write_private(d / f"{file}.key", _key_pem(key))
    _write_public(d / f"{file}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return identity(state_dir, file)


def grant_in(path: Path) -> Grant | None:
    """The grant of a PEM certificate file (None: the file's grant cannot be read)."""
    try:
        return grant_of(x509.load_pem_x509_certificate(path.read_bytes()))
    except (OSError, ValueError, RedyError):
        return None


def identity(state_dir: Path, name: str) -> Identity:
    d = pki_dir(state_dir)
    return Identity(ca=d / "ca.crt", cert=d / f"{name}.crt", key=d / f"{name}.key")


def ensure_identity(
    state_dir: Path, name: str, hosts: list[str], grant: Grant | None = None
) -> Identity:
    """`name`'s identity, issued on first use or when it no longer covers `hosts` or states
    another grant than `grant` (given: the node's limits as its launch derives them).

    On a gateway that holds the grid CA's certificate but not its key (a certificate issued
    elsewhere by `redy grid cert issue`), the certificate only has to cover `hosts[0]`, the
    address peers dial; the others are loopback conveniences that need no new certificate."""
    wanted = grant or Grant()
    _check_holder(name, wanted)
    ident = identity(state_dir, name)
    with _locked(state_dir):
        have = ident.cert.exists() and ident.key.exists() and ident.ca.exists()
        same = grant is None or grant_in(ident.cert) == grant if have else False
        if have and same and set(hosts) <= cert_hosts(ident.cert):
            return ident
        if have and not has_ca_key(state_dir):
            # The CA states the limits where its key is; a gateway keeps what it was given.
            if not hosts or hosts[0] in cert_hosts(ident.cert):
                return ident
            raise BrokerError(
                f"{ident.cert} is not valid for {hosts[0]}, the address peers dial; issue it"
                f" where the grid CA's key is: redy grid cert issue {name} --host {hosts[0]}"
            )
        return _issue(state_dir, name, hosts, wanted)


def ensure_operator(state_dir: Path, person: str) -> Identity:
    """This host's operator certificate (pki/operator.crt), issued for `person` on first use
    or when the one there is not an operator's (a copy of a node's, or of an older grid)."""
    ident = identity(state_dir, "operator")
    with _locked(state_dir):
        grant = grant_in(ident.cert) if ident.cert.exists() and ident.key.exists() else None
        if grant is not None and grant.role == "operator":
            return ident
        return _issue(state_dir, operator_name(person), [], Grant("operator"), file="operator")


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
@click.option(
    "--import-kw",
    type=click.FloatRange(0, 1e9),
    default=None,
    help="The most NODE may draw from the grid (kW): every node drops its offers beyond it.",
)
@click.option(
    "--export-kw",
    type=click.FloatRange(0, 1e9),
    default=None,
    help="The most NODE may feed into the grid (kW): every node drops its offers beyond it.",
)
def cert_issue(
    node: str,
    state_dir: str,
    hosts: tuple[str, ...],
    import_kw: float | None,
    export_kw: float | None,
) -> None:
    """Issue NODE's certificate (CN = NODE) for its advertised addresses, stating its
    connection limits."""
    grant = Grant("node", import_kw, export_kw)
    try:
        ident = issue(Path(state_dir), node, list(hosts) or ["127.0.0.1"], grant)
    except RedyError as exc:
        raise click.ClickException(str(exc)) from None
    if not grant.limited:
        click.echo(
            f"warning: {node}'s certificate states no import and export limits: its offers are"
            " held only to the grid-wide bound (capacity_kw); give --import-kw and --export-kw",
            err=True,
        )
    click.echo(f"{node}: {ident.cert} and {ident.key} (CA {ident.ca}; {grant.describe()})")


@cert.command("operator")
@click.argument("person")
@_STATE
def cert_operator(person: str, state_dir: str) -> None:
    """Issue PERSON's operator certificate (CN operator.PERSON, pki/operator.crt): it reads
    what a peer may read on grid listeners and is never a member; keep it off the gateways."""
    try:
        ident = issue_operator(Path(state_dir), person)
    except RedyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{operator_name(person)}: {ident.cert} and {ident.key} (CA {ident.ca})")


def common_name_of(path: Path) -> str | None:
    """The CN of a PEM certificate file."""
    names = x509.load_pem_x509_certificate(path.read_bytes()).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )
    return str(names[0].value) if names else None
