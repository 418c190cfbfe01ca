"""Offers' signatures: the edge between the grid's keys (redy.pki) and the offer market's core.

The core (redy.balancing.offers) takes callables: `sign(epoch, values)` and `refusal(offer)`.
Here they are made from the node's TLS identity: a `Signer` signs the node's offers with its key
(ECDSA P-256 over `signed_bytes`), a `Verifier` checks that an offer is signed by a certificate of
the grid CA that names its node and makes a member, and that the offer keeps the limits that
certificate states. The simulators use stand-ins with the same cost model (redy.sim.offer_market).
"""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import attrs
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from redy.balancing.offers import NodeId, cert_missing, offer_refusal
from redy.errors import RedyError
from redy.messages import CellCard, NodeOffer
from redy.pki import Grant, Identity, common_name, grant_of, member_refusal


def signed_bytes(
    node: str, epoch: int, values: Sequence[float], session: int | None = None
) -> bytes:
    body: list[object] = [node, epoch, [float(v) for v in values]]
    if session is not None:
        body.append(session)
    return orjson.dumps(body)


def card_bytes(node: str, broker: str, ts_s: float) -> bytes:
    """What a member signs in its cell market card (messages.CellCard)."""
    return orjson.dumps(["redy-card", node, broker, float(ts_s)])


def public_key_bytes(cert_b64: str) -> bytes:
    """The public key (DER SubjectPublicKeyInfo) of a certificate (base64 DER): what places a
    member in its cell (redy.balancing.cells.cell_of). RedyError if it is no certificate."""
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64, validate=True))
    except (ValueError, TypeError):
        raise RedyError("not a certificate (base64 DER)") from None
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Signer:
    """Signs this node's offers with the key of its TLS identity; knows the limits its
    certificate states (`grant`) and when this signer started (`session`, UNIX ms)."""

    def __init__(self, identity: Identity, session: int | None = None) -> None:
        key = serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RedyError(f"{identity.key}: expected an EC private key")
        self._key = key
        cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
        self.cert = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.node = common_name(cert.public_bytes(serialization.Encoding.DER)) or ""
        self.grant = grant_of(cert)
        self.session = session

    def sign_bytes(self, body: bytes) -> str:
        """The signature (base64) of `body` by this node's key (the plans' offers use it:
        redy.planning.wire.signed_body)."""
        return base64.b64encode(self._key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()

    def card(self, broker: str, ts_s: float) -> CellCard:
        """This node's cell market card: `broker` its grid listener, signed at `ts_s`."""
        sig = self.sign_bytes(card_bytes(self.node, broker, ts_s))
        return CellCard(node=self.node, broker=broker, cert=self.cert, ts_s=ts_s, sig=sig)

    def sign(self, epoch: int, values: Sequence[float]) -> NodeOffer:
        body = signed_bytes(self.node, epoch, values, self.session)
        sig = self._key.sign(body, ec.ECDSA(hashes.SHA256()))
        return NodeOffer(
            node=self.node,
            epoch=epoch,
            values=tuple(float(v) for v in values),
            session=self.session,
            cert=self.cert,
            sig=base64.b64encode(sig).decode(),
        )


@attrs.frozen
class _Member:
    """A certificate checked once: the member it names, its key and what the CA grants."""

    cert: str
    node: str
    key: ec.EllipticCurvePublicKey
    grant: Grant


class Verifier:
    """Checks that an offer is signed by a certificate of the grid CA that names its node, that
    the certificate makes a member (a node's, not an operator's; no reserved name), and that the
    offer stays within the limits the certificate states (`capacity_kw` where it states none).

    An offer may come without its certificate (its senders send it once per neighbour): it is
    then checked with the certificate held for its node, and `refusal` says so if none is held
    (`cert_missing`: the offer waits for a copy that carries it). Certificates are kept
    (bounded), per node the last one that checked."""

    def __init__(self, ca: Path, capacity_kw: float = math.inf, max_certs: int = 4096) -> None:
        self._ca = x509.load_pem_x509_certificate(ca.read_bytes())
        self.ca_der = self._ca.public_bytes(serialization.Encoding.DER)
        self.capacity_kw = capacity_kw
        self._by_cert: dict[str, _Member | str] = {}
        self._by_node: dict[str, _Member] = {}
        self._max = max_certs
        self.checked = 0  # signatures verified

    def _member(self, cert_b64: str) -> _Member | str:
        got = self._by_cert.get(cert_b64)
        if got is not None:
            return got
        got = self._check(cert_b64)
        if len(self._by_cert) >= self._max:
            self._by_cert.clear()
        self._by_cert[cert_b64] = got
        return got

    def _check(self, cert_b64: str) -> _Member | str:
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64, validate=True))
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            return "a certificate the grid CA did not issue"
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "an expired or not yet valid certificate"
        key = cert.public_key()
        cn = common_name(cert.public_bytes(serialization.Encoding.DER))
        if not isinstance(key, ec.EllipticCurvePublicKey) or cn is None:
            return "a certificate with no EC key or no common name"
        try:
            grant = grant_of(cert)
        except RedyError as exc:
            return f"a certificate whose grant cannot be read ({exc})"
        why = member_refusal(cn, grant)
        if why is not None:
            return why
        return _Member(cert_b64, cn, key, grant)

    def cert_of(self, node: NodeId) -> str | None:
        """The certificate (base64 DER) held for `node`, if any."""
        m = self._by_node.get(node)
        return m.cert if m is not None else None

    def signer_grant(self, node: str, cert: str | None, body: bytes, sig: str) -> Grant | str:
        """What the grid CA grants `node` if `sig` signs `body` with the key of a member
        certificate naming `node` (`cert`, else the one held for it); else why not, in words
        that name `node` (`cert_missing` if none is held). A certificate that checks is held
        for its node, as `refusal` holds it."""
        if cert is None:
            got: _Member | str | None = self._by_node.get(node)
            if got is None:
                return cert_missing
        else:
            got = self._member(cert)
        if isinstance(got, str):
            return f"offer of {node} with {got}"
        if got.node != node:
            return f"offer of {node} signed by {got.node}'s certificate"
        self.checked += 1
        try:
            got.key.verify(base64.b64decode(sig, validate=True), body, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature):
            return f"offer of {node} with a signature that does not match it"
        if cert is not None:
            if len(self._by_node) >= self._max and node not in self._by_node:
                self._by_node.clear()
            self._by_node[node] = got
        return got.grant

    def card_refusal(self, card: CellCard) -> str | None:
        """Why `card` is not its member's own (None: signed by a member certificate of the grid
        CA that names its node)."""
        got = self.signer_grant(
            card.node, card.cert, card_bytes(card.node, card.broker, card.ts_s), card.sig
        )
        if isinstance(got, str):
            return got.replace("offer of", "card of", 1)
        return None

    def refusal(self, offer: NodeOffer) -> str | None:
        """Why `offer` is not its node's own, or breaks its node's certified limits (None: it
        is and it keeps them); `cert_missing` if it carries no certificate and none is held."""
        if offer.cert is None:
            got: _Member | str | None = self._by_node.get(offer.node)
            if got is None:
                return cert_missing
        else:
            got = self._member(offer.cert)
        if isinstance(got, str):
            return f"offer of {offer.node} with {got}"
        if got.node != offer.node:
            return f"offer of {offer.node} signed by {got.node}'s certificate"
        self.checked += 1
        try:
            sig = base64.b64decode(offer.sig, validate=True)
            body = signed_bytes(offer.node, offer.epoch, offer.values, offer.session)
            got.key.verify(sig, body, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature):
            if offer.cert is None:
                return cert_missing  # signed with a certificate we do not hold (renewed)
            return f"offer of {offer.node} with a signature that does not match it"
        if offer.cert is not None:
            if len(self._by_node) >= self._max and offer.node not in self._by_node:
                self._by_node.clear()
            self._by_node[offer.node] = got
        grant = got.grant
        stated = grant.import_kw is not None or grant.export_kw is not None
        bounds = grant.bounds_kw(self.capacity_kw) if stated else None  # else the grid's bound
        why = offer_refusal(offer.values, self.capacity_kw, bounds)
        return None if why is None else f"offer of {offer.node}: {why}"


class CellKeys:
    """The cell market's keys (`redy.balancing.cell_node.Keys`) from this node's `Signer` and
    the grid's `Verifier`: offers signed as the offer market signs them, without their
    certificate; everything else signed with `Signer.sign_bytes`; a peer's signature checked
    with the certificate `certs` holds for it (the rosters' certificates, base64 DER, fetched
    once per seed period), which must be a member's of the grid CA naming it, and an offer
    also against the limits that certificate states (`Verifier.refusal`)."""

    def __init__(self, signer: Signer, verifier: Verifier, certs: dict[str, str]) -> None:
        self._signer, self._verifier, self._certs = signer, verifier, certs

    def sign_offer(self, epoch: int, values: tuple[float, ...]) -> NodeOffer:
        return attrs.evolve(self._signer.sign(epoch, values), cert=None)

    def sign(self, body: bytes) -> str:
        return self._signer.sign_bytes(body)

    def offer_refusal(self, offer: NodeOffer) -> str | None:
        cert = self._certs.get(offer.node)
        if cert is None:
            return f"offer of {offer.node}, whose certificate is in no roster held"
        return self._verifier.refusal(attrs.evolve(offer, cert=cert))

    def verify(self, node: str, body: bytes, sig: str) -> bool:
        cert = self._certs.get(node)
        if cert is None:
            return False
        return isinstance(self._verifier.signer_grant(node, cert, body, sig), Grant)
