"""Records one node's retained governance state and view, as an operator's client would: every
message on `redy/<node>/governance/state` and `redy/<node>/membership/view` of the node's own
broker, one JSON line each with the wall-clock time it arrived. Reconnects after a broker
restart. Run as a process (inside the node's network namespace when the node has one):

    python recorder.py --broker mqtt://127.0.0.1:PORT --credentials FILE --node N --out FILE
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--credentials", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    host, _, port = args.broker.partition("://")[2].rpartition(":")
    with open(args.credentials) as f:
        password = json.load(f)["users"]["operator"]
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 (closed at exit)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(f"redy/{args.node}/governance/state", qos=1)
        c.subscribe(f"redy/{args.node}/membership/view", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = None
        out.write(json.dumps({"t": time.time(), "topic": msg.topic, "msg": payload}) + "\n")

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"rec-{args.node}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set("operator", password)
    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(0.2, 1)
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect_async(host, int(port), keepalive=5)
    client.loop_forever(retry_first_connection=True)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
