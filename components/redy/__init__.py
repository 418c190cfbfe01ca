"""ReDy Grid: a reliable, dynamic, fully decentralized data network for the smart grid."""

from redy.errors import BrokerError, InvalidMessage, LaunchError, RedyError, SimulationError

__all__ = ["BrokerError", "InvalidMessage", "LaunchError", "RedyError", "SimulationError"]
__version__ = "0.1.0"
