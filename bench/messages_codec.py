"""Cost of validation: redy.messages.decode/encode against plain orjson on the same payloads.

Prints ratios against the baseline measured in the same run (python bench/messages_codec.py);
with --docs it also writes its page of the documentation site (docs/benchmarks/runs/).
"""

from __future__ import annotations

import argparse
import time

import docpage
import orjson

from redy import messages

_N = 20_000


def _measure(fn, payload) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(_N):
        fn(payload)
    return (time.perf_counter() - start) / _N


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/runs/ too")
    with docpage.recorded("messages_codec", enabled=ap.parse_args().docs):
        _run()


def _run() -> None:
    measurement = messages.Measurement(
        seq=12,
        ts_s=1_700_000_000.0,
        power_kw=-3.2,
        energy_kwh=-12.5,
        soc=0.4,
        forecast_kw=tuple(float(i) for i in range(24)),
    )
    view = messages.View(
        node="house-1",
        ts_s=1.0,
        entries=tuple(
            messages.ViewEntry(node=f"node-{i}", broker=f"mqtt://127.0.0.1:{20000 + i}", age=i)
            for i in range(20)
        ),
    )
    cases = [
        ("measurement", "redy/house-1/detection/meter/measurement", measurement),
        ("view (20 entries)", "redy/house-1/membership/view", view),
    ]
    for label, topic, msg in cases:
        payload = messages.encode(msg)
        base = _measure(orjson.loads, payload)
        full = _measure(lambda p, t=topic: messages.decode(t, p), payload)
        enc_base = _measure(orjson.dumps, messages.to_dict(msg))
        enc = _measure(messages.encode, msg)
        print(
            f"{label:<20} decode+validate / orjson.loads = {full / base:6.1f}x "
            f"({full * 1e6:.1f} us)   encode+validate / orjson.dumps = {enc / enc_base:6.1f}x"
        )


if __name__ == "__main__":
    main()
