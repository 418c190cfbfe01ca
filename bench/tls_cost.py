"""The cost of mutual TLS between nodes: a gossip epoch's CPU and a shuffle's round trip, with
and without TLS, through the same Mosquitto in the same run.

One mosquitto with two listeners on 127.0.0.1: plain MQTT (the baseline, which the grid no longer
uses) and mutual TLS as the grid listener has it (grid CA, node certificates, CN as username).
- gossip epoch: `--pushes` push-sum messages of a 201-price curve, each awaited until its PUBACK
  (what a node sends in an epoch of 3 phases x 40 rounds, with retries), CPU of this process and
  of the broker;
- shuffle round trip: a request published to the peer's topic, the peer's answer published back,
  time until it arrives (`--shuffles` times, median).

    python bench/tls_cost.py [--pushes 1200] [--shuffles 200]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docpage
import orjson

from redy import pki
from redy.brokers import mosquitto_binary
from redy.transport.client import AsyncLink

TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    broker_id = pki.issue(tmp, "broker", ["127.0.0.1"])
    plain, tls = _free_port(), _free_port()
    conf = tmp / "bench.conf"
    conf.write_text(
        f"""per_listener_settings true
user {getpass.getuser()}
set_tcp_nodelay true
listener {plain} 127.0.0.1
allow_anonymous true
listener {tls} 127.0.0.1
allow_anonymous false
cafile {broker_id.ca}
certfile {broker_id.cert}
keyfile {broker_id.key}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
"""
    )
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    for port in (plain, tls):
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.05)
    return proc, plain, tls


def _link(tmp: Path, name: str, port: int, secure: bool, **kw: object) -> AsyncLink:
    ident = pki.issue(tmp, name, ["127.0.0.1"])
    scheme = "mqtts" if secure else "mqtt"
    return AsyncLink(
        f"{scheme}://127.0.0.1:{port}",
        name,
        user=name,
        password="",
        timeout_s=5.0,
        tls=ident.client_context() if secure else None,
        expect_cn="broker" if secure else None,
        **kw,  # type: ignore[arg-type]
    )


async def _epoch_cpu(tmp: Path, port: int, secure: bool, pushes: int, broker: int) -> float:
    link = _link(tmp, f"pusher{int(secure)}", port, secure)
    await link.connect()
    payload = orjson.dumps(
        {
            "sender": "a",
            "epoch": 1,
            "round": 1,
            "algorithm": "pushsum",
            "weight": 0.5,
            "values": [1234.5678 + i for i in range(201)],
        }
    )
    cpu0, broker0 = time.process_time(), _cpu_s(broker)
    for _ in range(pushes):
        await link.publish("redy/b/grid/gossip/a", payload, qos=1)
    cpu = time.process_time() - cpu0 + _cpu_s(broker) - broker0
    await link.close()
    return cpu


async def _shuffle_rtt(tmp: Path, port: int, secure: bool, shuffles: int) -> float:
    got: asyncio.Queue[float] = asyncio.Queue()
    answerer: AsyncLink

    def on_request(_t: str, payload: bytes, _p: dict[str, object]) -> None:
        asyncio.get_running_loop().create_task(
            answerer.publish("redy/a/membership/shuffle/reply/b", payload, qos=1)
        )

    def on_reply(_t: str, _payload: bytes, _p: dict[str, object]) -> None:
        got.put_nowait(time.perf_counter())

    answerer = _link(
        tmp,
        f"b{int(secure)}",
        port,
        secure,
        subscriptions=("redy/b/membership/shuffle/+",),
        on_message=on_request,
    )
    asker = _link(
        tmp,
        f"a{int(secure)}",
        port,
        secure,
        subscriptions=("redy/a/membership/shuffle/reply/+",),
        on_message=on_reply,
    )
    await answerer.connect()
    await asker.connect()
    await asyncio.sleep(0.3)  # subscriptions in place
    request = orjson.dumps({"sender": "a", "broker": "mqtts://127.0.0.1:1", "nonce": 1})
    rtts = []
    for _ in range(shuffles):
        t0 = time.perf_counter()
        await asker.publish("redy/b/membership/shuffle/a", request, qos=1)
        rtts.append(await asyncio.wait_for(got.get(), 5) - t0)
    await asker.close()
    await answerer.close()
    return statistics.median(rtts)


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="redy-bench-tls-") as d:
        tmp = Path(d)
        proc, plain, tls = _broker(tmp)
        try:
            rows = {}
            for secure, port in ((False, plain), (True, tls)):
                cpu = await _epoch_cpu(tmp, port, secure, args.pushes, proc.pid)
                rtt = await _shuffle_rtt(tmp, port, secure, args.shuffles)
                rows[secure] = (cpu, rtt)
        finally:
            proc.terminate()
            proc.wait(10)
    (cpu0, rtt0), (cpu1, rtt1) = rows[False], rows[True]
    print(
        f"gossip epoch of {args.pushes} pushes (201 prices, awaited PUBACK), client + broker CPU:"
    )
    print(f"  plain {cpu0 * 1000:.0f} ms   TLS {cpu1 * 1000:.0f} ms   ratio {cpu1 / cpu0:.2f}")
    print(f"shuffle round trip (request + answer through the broker), median of {args.shuffles}:")
    print(f"  plain {rtt0 * 1000:.2f} ms   TLS {rtt1 * 1000:.2f} ms   ratio {rtt1 / rtt0:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pushes", type=int, default=1200)
    ap.add_argument("--shuffles", type=int, default=200)
    asyncio.run(_run(ap.parse_args()))
    return 0


if __name__ == "__main__":
    with docpage.recorded("tls_cost"):  # --docs: its page of the site too
        sys.exit(main())
