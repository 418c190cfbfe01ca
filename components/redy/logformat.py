"""How the `redy` processes log: quiet text lines by default, or JSON lines (`--log-format json`).

The choice travels to the processes a launch starts through the REDY_LOG_FORMAT environment
variable, so one flag turns a whole grid's logs into JSON lines a log shipper can read.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson

FORMATS = ("text", "json")
ENV_VAR = "REDY_LOG_FORMAT"
_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts_s (UNIX time), level, logger, msg, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts_s": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _one_line(record: logging.LogRecord) -> bool:
    """A library's exception log becomes one line: gmqtt logs a traceback for every malformed
    packet a peer's broker sends, which is the peer's fault, not ours, and already handled."""
    if record.exc_info and record.name.startswith("gmqtt"):
        _, exc, _ = record.exc_info
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def configure(verbose: bool = False, log_format: str | None = None) -> None:
    """Set up the root logger on stderr; `log_format` None reads REDY_LOG_FORMAT (text if unset)."""
    chosen = log_format or os.environ.get(ENV_VAR) or "text"
    if chosen not in FORMATS:
        chosen = "text"  # a bad inherited variable never stops a unit from starting
    os.environ[ENV_VAR] = chosen  # children started by a launch log the same way
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(_TEXT))
    handler.addFilter(_one_line)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # gmqtt logs every packet at INFO; our own lines say what matters.
    logging.getLogger("gmqtt").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # matplotlib announces its font cache at INFO on first use.
    logging.getLogger("matplotlib").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # testcontainers says "Pulling image" on every start, even when nothing is pulled.
    logging.getLogger("testcontainers").setLevel(logging.DEBUG if verbose else logging.WARNING)


class Tally:
    """How often something happened per key, to log it at the 1st, 2nd, 4th, 8th... time only:
    a hostile or broken peer cannot flood the log. Holds at most `limit` keys (the oldest are
    forgotten, and counted from 1 again if they come back)."""

    def __init__(self, limit: int = 1024) -> None:
        self.counts: dict[str, int] = {}
        self._limit = limit

    def add(self, key: str) -> int | None:
        """Count one more for `key`; its count when it is due for a log line, else None."""
        n = self.counts[key] = self.counts.pop(key, 0) + 1
        if len(self.counts) > self._limit:
            del self.counts[next(iter(self.counts))]
        return n if n & (n - 1) == 0 else None
