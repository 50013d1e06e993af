"""The adapters' shared plumbing: the polling loop every feed source runs in."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from adapters.common import AdapterError, poll_forever


def test_poll_forever_survives_failed_polls_and_reports_each():
    calls, errors = [], []

    async def poll_once():
        calls.append(len(calls))
        if len(calls) in (1, 3):
            raise AdapterError(f"peer down (call {len(calls)})")

    async def on_error(exc):
        errors.append(str(exc))

    asyncio.run(poll_forever(poll_once, "test feed", timedelta(0), rounds=4, on_error=on_error))
    assert calls == [0, 1, 2, 3]
    assert errors == ["peer down (call 1)", "peer down (call 3)"]


def test_poll_forever_logs_what_failed(caplog):
    async def poll_once():
        raise AdapterError("HTTP 503 from the price API")

    with caplog.at_level(logging.WARNING, logger="adapters.common"):
        asyncio.run(poll_forever(poll_once, "ERCOT", timedelta(0), rounds=2))
    assert [r.getMessage() for r in caplog.records] == ["ERCOT poll failed: HTTP 503 from the price API"] * 2


def test_poll_forever_lets_a_bug_through():
    # only a peer's failure is retried; a bug in the adapter must stop it, not loop forever
    async def poll_once():
        raise KeyError("price")

    with pytest.raises(KeyError):
        asyncio.run(poll_forever(poll_once, "ERCOT", timedelta(0), rounds=3))


def test_poll_forever_waits_the_interval_between_rounds_only():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await poll_forever(lambda: asyncio.sleep(0), "x", timedelta(milliseconds=50), rounds=3)
        return loop.time() - t0

    took = asyncio.run(main())
    assert 0.1 <= took < 0.5  # two waits between three polls, none after the last
