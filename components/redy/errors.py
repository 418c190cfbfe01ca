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


class SimulationError(RedyError):
    """Simulator parameters that cannot describe a run (e.g. SL >= c)."""


class BagError(RedyError):
    """A recording (MCAP) that cannot be written, read or played."""
