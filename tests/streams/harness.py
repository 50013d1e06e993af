"""Test harness for the real worker: a `wattmix worker` subprocess on the session broker.

Catch-up is detected the way the demo does it, without ListOffsets "latest" (tansu answers
it too low): the offsets our producer was given vs the group's committed offsets, listed
with every partition named (tansu breaks on the unnamed form).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from wattmix.demo import committed_offsets
from wattmix.demo import stop_worker as _stop


def start_worker(bootstrap: str, db: Path, group: str, topic_suffix: str, log: Path,
                 extra: Sequence[str] = ()) -> subprocess.Popen:
    """``wattmix worker`` in its own process group (``extra``: more command-line options)."""
    cmd = [sys.executable, "-m", "wattmix", "worker", "--kafka", bootstrap, "--db", str(db),
           "--group", group, "--topic-suffix", topic_suffix, *extra]
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    return _stop(proc, timeout)


def wait_committed(bootstrap: str, group: str, last_offsets: dict[tuple[str, int], int], proc: subprocess.Popen,
                   log: Path, timeout: float = 120.0) -> None:
    want = {tp: off + 1 for tp, off in last_offsets.items()}
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            got = asyncio.run(committed_offsets(bootstrap, group, sorted(want)))
        except Exception:
            got = {}
        if all(got.get(tp, -1) >= w for tp, w in want.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"worker did not commit {want} in {timeout}s (got {got}):\n{log.read_text()[-3000:]}")


async def _read_all(bootstrap: str, topic: str, idle_ms: int = 1500) -> list:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    out = []
    try:
        while True:
            batch = await c.getmany(timeout_ms=idle_ms, max_records=10000)
            if not batch:
                return out
            for recs in batch.values():
                out.extend(recs)
    finally:
        await c.stop()


def read_topic(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(r.value) for r in asyncio.run(_read_all(bootstrap, topic))]


def wait_for_actions(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    got: list[dict] = []
    while time.monotonic() < deadline:
        got = read_topic(bootstrap, topic)
        if len(got) >= n:
            return got
        time.sleep(0.5)
    return got
