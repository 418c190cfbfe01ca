"""What a member's flood and stall cost a real node (issue 10), against the same node undisturbed
in the same run.

One node: a Mosquitto broker (process backend) and its governance unit in distant mode (state
period 0.3 s, 2 s epochs, shuffle timeout 0.5 s). A member with a valid certificate of the grid CA
("evil") connects to the node's grid listener and, window after window:

- `quiet`: does nothing (the baseline);
- `flood`: publishes gossip (push-sum, 201 prices) at QoS 0 as fast as one client can;
- `stall`: sends 4 shuffle requests a second naming its own broker, which accepts TLS and never
  sends CONNACK (each answer would hang until a timeout);
- `retained`: publishes 100 retained messages of 60 kB on its peer topic.

For each window: the governance unit's resident memory (peak and end, /proc), the longest gap
between two of its state publications and how many went out (its own units' path), the dials
of the silent broker; ratios against `quiet`. Then how many of the retained messages the
broker kept.

    python bench/hostile_member.py [--window-s 20]
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docpage
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from redy import messages
from redy.brokers import NodeBroker, ProcessBroker
from redy.topics import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "adversarial"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from members import BadBrokers, member, start_governance

_MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(port: int, user: str | None, password: str | None, cid: str, tls: Any = None) -> Any:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    inbox: queue.Queue[Any] = queue.Queue()
    up = threading.Event()
    if user is not None:
        c.username_pw_set(user, password)
    if tls is not None:
        c.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    c.on_connect = lambda *_a: up.set()
    c.on_message = lambda _c, _u, m: inbox.put(m)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not up.wait(10):
        raise SystemExit(f"no CONNACK from 127.0.0.1:{port}")
    c.inbox = inbox
    return c


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / _MIB
    return 0.0


def _window(name: str, seconds: float, gov: Any, watch: Any, act: Any) -> dict[str, float]:
    """Run `act(now)` in a loop for `seconds` while timing the node's states and its memory."""
    with contextlib.suppress(queue.Empty):
        while True:
            watch.inbox.get_nowait()
    started = last = time.monotonic()
    states, worst, peak, sent = 0, 0.0, _rss_mib(gov.pid), 0
    next_sample = started
    while (now := time.monotonic()) - started < seconds:
        sent += act(now)
        with contextlib.suppress(queue.Empty):
            while True:
                m = watch.inbox.get_nowait()
                if m.topic.endswith("governance/state"):
                    t = time.monotonic()
                    worst, last, states = max(worst, t - last), t, states + 1
        if now >= next_sample:
            peak, next_sample = max(peak, _rss_mib(gov.pid)), now + 0.25
    if gov.poll() is not None:
        raise SystemExit(f"the governance unit ended during {name}")
    return {
        "states": states,
        "worst_gap_s": max(worst, time.monotonic() - last),
        "rss_peak_mib": peak,
        "rss_end_mib": _rss_mib(gov.pid),
        "sent": sent,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--window-s", type=float, default=20.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        config = NodeBroker(
            node="house-1",
            port=_free_port(),
            grid_port=_free_port(),
            unit_port=_free_port(),
            state_dir=Path(tmp) / "state",
            units={},
        )
        broker = ProcessBroker(config, die_with_parent=True)
        stack.callback(broker.stop)
        broker.start()
        gov = start_governance(
            broker, Path(tmp) / "governance.log", "--period-s", "0.3", "--epoch-s", "2",
            "--shuffle-period-s", "0.5", "--shuffle-timeout-s", "0.5",
        )  # fmt: skip
        stack.callback(gov.wait, 15)
        stack.callback(gov.send_signal, signal.SIGTERM)
        identity = member(config.state_dir, "evil")
        bad = BadBrokers(identity)
        stack.callback(bad.close)
        watch = _client(config.port, "operator", broker.credentials.password("operator"), "op")
        watch.subscribe(render("node_state", node="house-1"))
        evil = _client(config.grid_listener_port, None, None, "evil", identity)
        gossip = messages.encode(
            messages.Gossip(
                sender="evil", epoch=1, round=1, algorithm="pushsum", weight=0.5,
                values=(1.0,) * 201,
            )
        )  # fmt: skip
        gossip_topic = render("gossip", node="house-1", peer="evil")
        shuffle_topic = render("shuffle", node="house-1", peer="evil")
        nonce = [0]
        next_request = [0.0]

        def flood(_now: float) -> int:
            for _ in range(50):
                evil.publish(gossip_topic, gossip, qos=0)
            return 50

        def stall(now: float) -> int:
            if now < next_request[0]:
                time.sleep(0.01)
                return 0
            next_request[0] = now + 0.25
            nonce[0] += 1
            request = messages.ShuffleRequest(
                sender="evil", broker=bad.uris["silent"], nonce=nonce[0]
            )
            evil.publish(shuffle_topic, messages.encode(request), qos=1)
            return 1

        def quiet(_now: float) -> int:
            time.sleep(0.01)
            return 0

        time.sleep(3.0)  # past start-up
        runs = {
            "quiet": _window("quiet", a.window_s, gov, watch, quiet),
            "flood": _window("flood", a.window_s, gov, watch, flood),
            "after flood": _window("after flood", 5.0, gov, watch, quiet),
            "stall": _window("stall", a.window_s, gov, watch, stall),
        }
        base = runs["quiet"]
        print(f"one node, windows of {a.window_s:g} s (state period 0.3 s)")
        for name, r in runs.items():
            rate = r["sent"] / (a.window_s if name != "after flood" else 5.0)
            print(
                f"  {name:11s}: {rate:7.0f} msg/s sent; {r['states']:3.0f} states, longest gap "
                f"{r['worst_gap_s']:.2f} s ({r['worst_gap_s'] / base['worst_gap_s']:.2f}x quiet);"
                f" RSS peak {r['rss_peak_mib']:.1f} MiB ({r['rss_peak_mib'] / base['rss_peak_mib']:.2f}x),"
                f" end {r['rss_end_mib']:.1f} MiB"
            )
        print(
            f"  stall: {nonce[0]} requests naming a silent broker, {bad.dials['silent']} dials of it"
        )
        text = (Path(tmp) / "governance.log").read_text()
        print(f"  the governance log names evil {text.count('evil')} times")
        # Retained: 100 messages of 60 kB on evil's own peer topic of the node's broker.
        blob = b"x" * 60_000
        for k in range(100):
            evil.publish(f"{gossip_topic}/{k}", blob, qos=1, retain=True)
            evil.publish(gossip_topic, blob, qos=1, retain=True)
        time.sleep(1.0)
        probe = _client(config.port, "operator", broker.credentials.password("operator"), "op2")
        probe.subscribe("#")
        time.sleep(2.0)
        kept = []
        with contextlib.suppress(queue.Empty):
            while True:
                m = probe.inbox.get_nowait()
                if m.retain and "evil" in m.topic:
                    kept.append(len(m.payload))
        print(f"  retained: 200 published by evil, {len(kept)} kept ({sum(kept) / 1e3:.0f} kB)")
        for c in (watch, evil, probe):
            c.loop_stop()
            c.disconnect()


if __name__ == "__main__":
    with docpage.recorded("hostile_member"):  # --docs: its page of the site too
        main()
