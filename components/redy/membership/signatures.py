"""Descriptors' signatures (issue 26): the edge between the grid's keys (redy.pki) and the signed
shuffle's core (redy.membership.secure), as redy.signing is for offers.

Every hop of a descriptor's chain is signed by the node it leaves: hop k (from `chain[k]` to
`chain[k + 1]`) signs the owner, its broker, the period of issue, the chain up to the recipient
and the previous hop's signature (ECDSA P-256, SHA-256), so hop 0 is the owner's issue and each
later hop says "I handed this on to him". Two such chains of one descriptor that part at a node
are two of that node's signatures handing it to two others: evidence anyone holding the
certificates can check. `ChainKeys` signs our hops; `ChainCheck` verifies a descriptor against
the certificates of the grid CA that name its signers; `SignedShuffle` is the core with both,
for a driver that moves messages (it logs each conviction it finds, naming the member, and
keeps those it can prove to others in `proved`).
"""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Callable, Iterable, Sequence

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from redy.errors import RedyError
from redy.membership.secure import Descriptor, SecureCyclon, SecureOut, Verdict
from redy.pki import Identity, common_name, grant_of, member_refusal

_log = logging.getLogger(__name__)
_DOMAIN = "redy-descriptor"  # signed bytes of nothing else start so


def hop_bytes(d: Descriptor, k: int) -> bytes:
    """What hop `k` of `d` signs (module doc)."""
    prev = d.sigs[k - 1] if k else ""
    return orjson.dumps([_DOMAIN, d.owner, d.broker, d.born, list(d.chain[: k + 2]), prev])


class ChainKeys:
    """Signs the hops this node hands descriptors on with, with the key of its TLS identity."""

    def __init__(self, identity: Identity) -> None:
        key = serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RedyError(f"{identity.key}: expected an EC private key")
        self._key = key
        cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
        self.node = common_name(cert.public_bytes(serialization.Encoding.DER)) or ""

    def seal(self, d: Descriptor) -> Descriptor:
        """`d` with our signature on each of its last hops that leave us and are unsigned."""
        sigs = list(d.sigs)
        for k in range(len(sigs), len(d.chain) - 1):
            if d.chain[k] != self.node:
                raise RedyError(f"hop {k} of {d.owner}/{d.born} leaves {d.chain[k]}, not us")
            sigs.append("")  # hop_bytes reads only the previous hops' signatures
            body = hop_bytes(d._replace(sigs=tuple(sigs)), k)
            sig = self._key.sign(body, ec.ECDSA(hashes.SHA256()))
            sigs[k] = base64.b64encode(sig).decode()
        return d._replace(sigs=tuple(sigs))


class ChainCheck:
    """Verifies descriptors: every hop signed by a member certificate of the grid CA naming the
    node the hop leaves. `cert_of(node)` gives a node's certificate (PEM or DER bytes), or None
    when we hold none (the descriptor then does not verify)."""

    def __init__(self, ca: x509.Certificate, cert_of: Callable[[str], bytes | None]) -> None:
        self._ca = ca
        self._cert_of = cert_of
        self._keys: dict[str, ec.EllipticCurvePublicKey | None] = {}
        self.checked = 0  # signatures verified

    def member(self, raw: bytes) -> tuple[str, ec.EllipticCurvePublicKey] | None:
        """The member a certificate (PEM or DER) names and its key, if the grid CA issued it
        to a member; None otherwise."""
        try:
            if raw.startswith(b"-----"):
                cert = x509.load_pem_x509_certificate(raw)
            else:
                cert = x509.load_der_x509_certificate(raw)
            cert.verify_directly_issued_by(self._ca)
            cn = common_name(cert.public_bytes(serialization.Encoding.DER))
            pub = cert.public_key()
            if (
                cn is not None
                and member_refusal(cn, grant_of(cert)) is None
                and isinstance(pub, ec.EllipticCurvePublicKey)
            ):
                return cn, pub
        except (ValueError, TypeError, InvalidSignature, RedyError):
            pass
        return None

    def _key(self, node: str) -> ec.EllipticCurvePublicKey | None:
        if node in self._keys:
            return self._keys[node]
        raw = self._cert_of(node)
        got = None if raw is None else self.member(raw)
        if got is None or got[0] != node:
            return None  # a certificate may still come with a later message
        self._keys[node] = got[1]
        return got[1]

    def check(self, d: Descriptor) -> Descriptor:
        """`d` with `valid` set to whether its whole chain verifies."""
        ok = len(d.chain) >= 2 and len(d.sigs) == len(d.chain) - 1 and d.chain[0] == d.owner
        for k in range(len(d.sigs)) if ok else ():
            key = self._key(str(d.chain[k]))
            if key is None:
                ok = False
                break
            try:
                self.checked += 1
                key.verify(base64.b64decode(d.sigs[k]), hop_bytes(d, k), ec.ECDSA(hashes.SHA256()))
            except (InvalidSignature, ValueError):
                ok = False
                break
        return d._replace(valid=ok)

    def proves(self, a: Descriptor, b: Descriptor, culprit: str) -> bool:
        """Whether `a` and `b` are evidence that `culprit` handed one descriptor on twice: both
        verify, name one descriptor, and part right after `culprit`."""
        from redy.membership.secure import fork_point

        same = (a.owner, a.broker, a.born) == (b.owner, b.broker, b.born)
        both = self.check(a).valid and self.check(b).valid
        return same and both and fork_point(a.chain, b.chain) == culprit


class SignedShuffle:
    """The signed shuffle of one node with its keys: what a driver calls. Outgoing descriptors
    are signed, incoming ones checked before the core sees them; each conviction found is logged
    once, naming the member and why."""

    def __init__(
        self,
        identity: Identity,
        uri: str,
        view_size: int,
        shuffle_length: int,
        rng: random.Random,
        cert_of: Callable[[str], bytes | None],
        **core: object,
    ) -> None:
        self.keys = ChainKeys(identity)
        ca = x509.load_pem_x509_certificate(identity.ca.read_bytes())
        self.check = ChainCheck(ca, cert_of)
        self.node = self.keys.node
        self.proved: list[Verdict] = []  # our findings with proof, for the driver to pass on
        self.core = SecureCyclon(
            self.node,
            uri,
            view_size,
            shuffle_length,
            rng,
            **core,  # type: ignore[arg-type]
        )

    def _out(self, out: SecureOut | None) -> SecureOut | None:
        if out is None:
            return None
        token = out.token  # ours to present: handed to us, already signed
        return out._replace(token=token, entries=tuple(self.keys.seal(d) for d in out.entries))

    def _in(self, entries: Iterable[Descriptor]) -> list[Descriptor]:
        return [self.check.check(d) for d in entries]

    def _report(self) -> None:
        for v in self.core.take_verdicts():
            _log.warning("node=%s convicted %s: %s", self.node, v.culprit, v.reason)
            if v.proof:
                self.proved.append(v)

    def tick(self, period: int) -> SecureOut | None:
        return self._out(self.core.tick(period))

    def on_request(
        self,
        sender: str,
        token: Descriptor | None,
        entries: Sequence[Descriptor],
        period: int,
        news: Iterable[Verdict] = (),
    ) -> tuple[Descriptor, ...] | None:
        checked_token = None if token is None else self.check.check(token)
        reply = self.core.on_request(sender, checked_token, self._in(entries), period, (), news)
        self._report()
        if reply is None:
            return None
        return tuple(self.keys.seal(d) for d in reply)

    def on_reply(
        self,
        nonce: int,
        sender: str,
        entries: Sequence[Descriptor],
        news: Iterable[Verdict] = (),
    ) -> bool:
        done = self.core.on_reply(nonce, sender, self._in(entries), (), news)
        self._report()
        return done
