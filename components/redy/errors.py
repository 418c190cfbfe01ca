"""The exception families of ReDy Grid: every error a user can cause is one of these."""

from __future__ import annotations


class RedyError(Exception):
    """Base of every error ReDy raises on purpose (bad input, bad launch file, broker trouble)."""


class InvalidMessage(RedyError):
    """A payload or topic that does not match topics.yaml; the text says what was expected."""


class LaunchError(RedyError):
    """A launch file that cannot be run; the text names the file, the line and what was expected."""


class BrokerError(RedyError):
    """A broker that cannot be configured, started, or reached."""


class SettingError(RedyError):
    """A unit setting out of its range or inconsistent with another (SL >= c)."""


class SimulationError(RedyError):
    """Simulator parameters that cannot describe a run (e.g. SL >= c)."""


class BagError(RedyError):
    """A recording (MCAP) that cannot be written, read or played."""


class ContractError(RedyError):
    """A topics.yaml that does not describe a contract (an unknown key, a missing field)."""


class DeviceError(RedyError):
    """An unknown device model, bad model parameters, or a real device that misbehaves."""


class DeviceUnavailable(DeviceError):
    """The device does not answer (connection refused, timeout, not connected, said offline)."""


class DeviceFault(DeviceError):
    """The device answered, but with an error code or a value that cannot be right."""


class DeliveryFailed(BrokerError):
    """A connect or publish that did not complete: refused, timed out, window full, link lost."""

    def __init__(self, uri: str, reason: str, code: int | None = None) -> None:
        super().__init__(f"broker {uri}: {reason}")
        self.uri = uri
        self.reason = reason
        self.code = code  # the CONNACK reason code of a refused connect, if one came


class WrongIdentity(DeliveryFailed):
    """The broker at `uri` is not the node we meant to reach: its certificate names another
    node (`presented`), or it speaks no TLS. Proof of a bogus address, not of a dead node."""

    def __init__(self, uri: str, reason: str, presented: str | None = None) -> None:
        super().__init__(uri, reason)
        self.presented = presented


class PeerUnreachable(DeliveryFailed):
    """A neighbour's grid listener refused us, did not answer in time, or lost the message."""


class PeerImpostor(PeerUnreachable):
    """The broker at a view entry's address is not the node the entry names (another node's
    certificate, none, or plain MQTT): the entry is bogus, which says nothing about the node."""

    def __init__(self, uri: str, reason: str, presented: str | None = None) -> None:
        super().__init__(uri, reason)
        self.presented = presented
