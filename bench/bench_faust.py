"""The naive baseline: a plain Faust agent on the same topic (run by bench_stream.py).

    python bench/bench_faust.py --kafka HOST:PORT --topic T --messages N --mode noop|send [--out T2]

``noop``: ``async for value in stream: pass``. ``send``: one ``await out.send(value=...)``
per event. Raw bytes (``value_serializer="raw"``, the cheapest Faust codec), Faust defaults
otherwise (plus the short session timeout tansu needs). Writes ``--result`` (JSON): the events and
seconds from the first event received to the N-th, then exits without waiting for shutdown.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import orjson


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kafka", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--mode", choices=["noop", "send"], default="noop")
    ap.add_argument("--result", required=True, help="JSON result file")
    ap.add_argument("--datadir", default=None)
    args = ap.parse_args()

    import faust

    app = faust.App(f"bench-faust-{args.mode}-{uuid.uuid4().hex[:8]}", broker=f"kafka://{args.kafka}",
                    value_serializer="raw", key_serializer="raw", store="memory://", web_enabled=False,
                    topic_disable_leader=True, broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
                    consumer_auto_offset_reset="earliest", producer_acks=-1,
                    datadir=args.datadir or tempfile.mkdtemp(prefix="wm-bench-faust-"))
    topic = app.topic(args.topic, value_type=bytes, key_type=bytes)
    out = app.topic(args.out or (args.topic + ".out"), value_type=bytes, key_type=bytes)
    n_target = args.messages
    state = {"n": 0, "t0": 0.0}
    send = args.mode == "send"

    @app.agent(topic)
    async def agent(stream):  # noqa: ANN001
        async for value in stream:
            n = state["n"] = state["n"] + 1
            if n == 1:
                state["t0"] = time.perf_counter()
            if send:
                await out.send(key=b"k", value=value)
            if n >= n_target:
                if send:
                    await app.producer.flush()
                dt = time.perf_counter() - state["t0"]
                with open(args.result, "wb") as f:
                    f.write(orjson.dumps({"mode": args.mode, "events": n - 1, "seconds": dt, "rate": (n - 1) / dt}))
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
