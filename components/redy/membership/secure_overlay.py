"""The signed shuffle's membership as a sans-IO state machine (launch setting `shuffle: signed`,
issue 26): what `redy.membership.overlay.Overlay` is to the plain shuffle, around
`redy.membership.signatures.SignedShuffle`, with the same events and the same `Send` out, so the
driver (redy.units.overlay) runs either.

Periods are the grid's: the wall clock over the shuffle period (`wall`, injected), so every
node's descriptors carry the same numbering. Descriptors travel as `messages.SignedEntry`; the
certificates of the nodes that signed their hops ride along (`certs`, base64 DER) and are kept,
bounded, by node; a descriptor whose signer's certificate we do not hold does not verify. The
retained view and the neighbour list are the core's entries as `ViewEntry`s (age in periods). A
joining node's introducer and the introducer's retained view are contacts only: they were not
handed to it, so its first requests carry no token and place only its own descriptor.

Verdicts travel as their proof (`messages.Evidence`): the two signed copies of a descriptor that
part right after the culprit, with their signers' certificates. A node that finds one, or checks
one a neighbour sent, drops the culprit and sends the proof to every neighbour in its view, and
for `_SPREAD_PERIODS` periods to each one that joins it; a receiver believes no one's word, only
the signatures (`ChainCheck.proves`). A forged token or a dead descriptor convicts its sender
where it arrives, but stays there: nobody's signature says who sent it. Proofs are checked at
most `_EVIDENCE_PER_SENDER` per sender and `_EVIDENCE_PER_PERIOD` in all a period; proofs
against a member already convicted, or from one, cost nothing.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from redy import messages
from redy.membership.overlay import RecentPeers, Send
from redy.membership.secure import Descriptor, SecureOut, Verdict
from redy.membership.signatures import SignedShuffle
from redy.pki import Identity

_log = logging.getLogger(__name__)
_MAX_CERTS = 4096
_MAX_CERTS_PER_MESSAGE = 64
_MAX_CERTS_PER_PROOF = 32
_EVIDENCE_PER_SENDER = 4  # proofs checked per sender and period (an honest one sends a few)
_EVIDENCE_PER_PERIOD = 32  # proofs checked per period from everyone
_SPREAD_PERIODS = 20  # periods a proof still goes to neighbours that join the view
_PROOFS_KEPT = 64


def to_wire(d: Descriptor) -> messages.SignedEntry:
    return messages.SignedEntry(
        node=str(d.owner), broker=d.broker, born=d.born, chain=tuple(d.chain), sigs=d.sigs
    )


def from_wire(e: messages.SignedEntry) -> Descriptor:
    return Descriptor(e.node, e.broker, e.born, tuple(e.chain), True, tuple(e.sigs))


class SecureOverlay:
    """The signed membership of node `node` (grid listener `grid_uri`) around `shuffle`."""

    def __init__(
        self,
        *,
        identity: Identity,
        grid_uri: str,
        view_size: int,
        shuffle_length: int,
        rng: random.Random,
        timeout_s: float,
        period_s: float,
        wall: Callable[[], float] = time.time,
        detector: str = "verify",
    ) -> None:
        self.shuffle = SignedShuffle(
            identity, grid_uri, view_size, shuffle_length, rng, self._cert_of, detector=detector
        )
        self.node = self.shuffle.node
        self.grid_uri = grid_uri
        self.core = self.shuffle.core
        self.timeout_s = timeout_s
        self.period_s = period_s
        self._wall = wall
        self._deadlines: dict[int, float] = {}
        self._certs: OrderedDict[str, str] = OrderedDict()  # node -> certificate, base64 DER
        pem = x509.load_pem_x509_certificate(identity.cert.read_bytes())
        der = pem.public_bytes(serialization.Encoding.DER)
        self._certs[self.node] = base64.b64encode(der).decode()
        self._cn: dict[str, str | None] = {}  # certificate -> its CN
        self.lost = RecentPeers(2 * view_size)
        # culprit -> (period learnt, the proof, the nodes told or not to tell)
        self._proofs: OrderedDict[str, tuple[int, tuple[Descriptor, ...], set[str]]] = OrderedDict()
        self._checks: tuple[int, Counter[str]] = (-1, Counter())  # proofs checked this period
        self._complained: dict[str, int] = {}  # sender -> period its flood was last logged
        self.evidence_dropped = 0  # proofs over the budget, not checked
        self.evidence_refused = 0  # proofs that did not check out
        # A restarted process may have issued this period's descriptor before it died.
        self.core.resume(self.period)

    # -- reading -------------------------------------------------------------------------------

    @property
    def period(self) -> int:
        return int(self._wall() // self.period_s)

    @property
    def view(self) -> tuple[messages.ViewEntry, ...]:
        return tuple(
            messages.ViewEntry(node=str(e.node), broker=e.broker, age=max(0, e.age))
            for e in self.core.view
        )

    @property
    def alone(self) -> bool:
        return not len(self.core)

    # -- events --------------------------------------------------------------------------------

    def seed(self, descriptor: messages.NodeDescriptor | None, view: messages.View | None) -> None:
        """Contacts from an introducer's retained descriptor and view (module doc)."""
        p = self.period
        seeds = []
        if descriptor is not None:
            seeds.append(Descriptor(descriptor.node, descriptor.broker, p, (descriptor.node,)))
        if view is not None:
            seeds += [Descriptor(e.node, e.broker, p - e.age, (e.node,)) for e in view.entries]
        self.core.seed(seeds, p)

    def tick(self, now: float) -> list[Send]:
        """One shuffle period: lose what timed out, then the core's request of this period."""
        for nonce, deadline in list(self._deadlines.items()):
            if now >= deadline:
                del self._deadlines[nonce]
                self.core.on_timeout(nonce)
                _log.info("node=%s shuffle %d timed out", self.node, nonce)
        out = self.shuffle.tick(self.period)
        sends = self._evidence_sends()  # to the neighbours that joined since
        return sends if out is None else [self._request(out), *sends]

    def sent(self, send: Send, now: float) -> None:
        if isinstance(send.message, messages.ShuffleRequest):
            self._deadlines[send.message.nonce] = now + self.timeout_s

    def failed(self, send: Send, reason: str = "", impostor: bool = False) -> None:
        if isinstance(send.message, messages.ShuffleRequest):
            self._deadlines.pop(send.message.nonce, None)
            self.core.on_timeout(send.message.nonce)
        self.unreachable(send.node, send.broker, reason, impostor)

    def unreachable(self, node: str, broker: str, reason: str = "", impostor: bool = False) -> None:
        if impostor:
            _log.warning(
                "node=%s dropped a bogus entry: %s at %s (%s)", self.node, node, broker, reason
            )
            self.core.discard(node)
            return
        _log.info("node=%s neighbour %s unreachable: %s", self.node, node, reason)
        self.core.on_unreachable(node)
        self.lost.put(node, broker)

    def on_request(self, request: messages.ShuffleRequest) -> Send:
        """Answer a request: our descriptors handed back, or a refusal."""
        self._learn(request.certs)
        token = None if request.token is None else from_wire(request.token)
        entries = [from_wire(e) for e in request.signed or ()]
        got = self.shuffle.on_request(request.sender, token, entries, self.period)
        if got is None:
            reply = messages.ShuffleReply(sender=self.node, nonce=request.nonce, refused=True)
        else:
            reply = messages.ShuffleReply(
                sender=self.node,
                nonce=request.nonce,
                signed=tuple(to_wire(d) for d in got),
                certs=self._certs_for(got),
            )
        return Send(request.sender, request.broker, reply)

    def on_reply(self, reply: messages.ShuffleReply) -> bool:
        self._deadlines.pop(reply.nonce, None)
        self._learn(reply.certs)
        if reply.refused:
            self.core.on_refused(reply.nonce)
            return True
        entries = [from_wire(e) for e in reply.signed or ()]
        return self.shuffle.on_reply(reply.nonce, reply.sender, entries)

    def take_evidence(self) -> list[Send]:
        """The proofs of what the last events convicted, to every neighbour (module doc)."""
        for v in self.shuffle.proved:
            self._keep(v, set())
        self.shuffle.proved.clear()
        return self._evidence_sends()

    def on_evidence(self, msg: messages.Evidence) -> list[Send]:
        """Check a neighbour's proof; if it holds, drop the culprit and pass the proof on."""
        culprit, sender, core = msg.culprit, msg.sender, self.core
        if culprit in core.convicted or sender in core.convicted or sender == self.node:
            return []
        p = self.period
        at, checked = self._checks
        if at != p:
            checked = Counter()
            self._checks = (p, checked)
        if checked[sender] >= _EVIDENCE_PER_SENDER or checked.total() >= _EVIDENCE_PER_PERIOD:
            self.evidence_dropped += 1
            last = self._complained.get(sender)
            if last is None or p - last >= 60 / self.period_s:
                if len(self._complained) >= _MAX_CERTS:
                    self._complained.clear()
                self._complained[sender] = p
                _log.warning(
                    "node=%s %s sends more evidence than we check; dropping the rest (%d so far)",
                    self.node,
                    sender,
                    self.evidence_dropped,
                )
            return []
        checked[sender] += 1
        self._learn(msg.certs)
        copies = tuple(from_wire(e) for e in msg.copies)
        if len(copies) != 2 or not self.shuffle.check.proves(*copies, culprit):
            self.evidence_refused += 1
            _log.warning(
                "node=%s dropped evidence from %s against %s: it does not prove a descriptor "
                "handed on twice",
                self.node,
                sender,
                culprit,
            )
            return []
        d = copies[0]
        verdict = Verdict(culprit, f"handed the descriptor {d.owner}/{d.born} on twice", copies)
        if culprit == self.node:  # our own signatures: a bug, or a restart in one period
            _log.error("node=%s evidence from %s convicts us: %s", self.node, sender, verdict)
            return []
        core.learn([verdict])
        _log.warning(
            "node=%s convicted %s on evidence from %s: %s",
            self.node,
            culprit,
            sender,
            verdict.reason,
        )
        self._keep(verdict, {sender})
        return self._evidence_sends()

    # -- inside --------------------------------------------------------------------------------

    def _keep(self, verdict: Verdict, told: set[str]) -> None:
        culprit = str(verdict.culprit)
        self._proofs[culprit] = (self.period, verdict.proof, {*told, culprit})
        self._proofs.move_to_end(culprit)
        while len(self._proofs) > _PROOFS_KEPT:
            self._proofs.popitem(last=False)

    def _evidence_sends(self) -> list[Send]:
        """A proof to each neighbour not yet told, for _SPREAD_PERIODS after we learnt it."""
        if not self._proofs:
            return []
        limit = self.period - _SPREAD_PERIODS
        out = []
        for culprit, (at, proof, told) in list(self._proofs.items()):
            if at < limit:
                del self._proofs[culprit]
                continue
            msg = None
            for d in self.core.descriptors:
                node = str(d.owner)
                if node in told:
                    continue
                told.add(node)
                if msg is None:
                    msg = messages.Evidence(
                        sender=self.node,
                        culprit=culprit,
                        copies=tuple(to_wire(c) for c in proof),
                        certs=self._certs_for(proof)[:_MAX_CERTS_PER_PROOF],
                    )
                out.append(Send(node, d.broker, msg))
        return out

    def _request(self, out: SecureOut) -> Send:
        held = [*out.entries, *(() if out.token is None else (out.token,))]
        request = messages.ShuffleRequest(
            sender=self.node,
            broker=self.grid_uri,
            nonce=out.nonce,
            token=None if out.token is None else to_wire(out.token),
            signed=tuple(to_wire(d) for d in out.entries),
            certs=self._certs_for(held),
        )
        return Send(str(out.target.owner), out.target.broker, request)

    def _cert_of(self, node: str) -> bytes | None:
        cert = self._certs.get(node)
        return None if cert is None else base64.b64decode(cert)

    def _certs_for(self, entries: Iterable[Descriptor]) -> tuple[str, ...]:
        signers = dict.fromkeys(str(n) for d in entries for n in d.chain[:-1])
        certs = [self._certs[n] for n in signers if n in self._certs]
        return tuple(certs[:_MAX_CERTS_PER_MESSAGE])

    def _learn(self, certs: Iterable[str] | None) -> None:
        """Keep the certificates a message carried that the grid CA issued to members, by the
        node they name (one checked once)."""
        for cert in certs or ():
            cn = self._cn.get(cert)
            if cert not in self._cn:
                try:
                    got = self.shuffle.check.member(base64.b64decode(cert, validate=True))
                except ValueError:
                    got = None
                cn = None if got is None else got[0]
                if len(self._cn) >= _MAX_CERTS:
                    self._cn.clear()
                self._cn[cert] = cn
            if cn is None or cn == self.node:
                continue
            self._certs[cn] = cert
            self._certs.move_to_end(cn)
            while len(self._certs) > _MAX_CERTS:
                self._certs.popitem(last=False)
