"""docker-compose.yml is valid and matches the wire contract (topics, partitions, services).

Validated with ``docker-compose config`` (Debian's ``docker-compose`` package works without a
Docker engine; ``.ci/run`` installs it) or ``docker compose`` (v2 plugin) when that exists.
The checks use compose's own rendering (``config``, ``config --services``, ``--volumes``), so
no YAML library is needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from schemas.topics import ALL_TOPICS, DEFAULT_PARTITIONS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="neither 'docker-compose' nor the 'docker compose' plugin is installed "
           "(apt-get install docker-compose; .ci/run does this)")


def compose(*args: str) -> str:
    assert COMPOSE is not None
    out = subprocess.run([*COMPOSE, "-f", str(COMPOSE_FILE), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"compose {' '.join(args)} failed:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def rendered() -> str:
    return compose("config")


@needs_compose
def test_compose_config_is_valid() -> None:
    compose("config", "-q")


@needs_compose
def test_services_and_volumes() -> None:
    assert set(compose("config", "--services").split()) == {"kafka", "topic-init", "worker", "feed"}
    assert {"kafka-data", "wattmix-data"} <= set(compose("config", "--volumes").split())


# The rendered config is block-style YAML with services indented by 2 spaces. The helpers
# below accept both compose v1 (Debian's docker-compose) and v2 renderings.


def _service_block(text: str, name: str) -> str:
    """The rendered YAML of one service."""
    match = re.search(rf"^  {re.escape(name)}:\n((?:    .*\n|\n)*)", text, re.MULTILINE)
    assert match, f"service {name} not found in rendered config"
    return match.group(1)


def _command(block: str) -> list[str]:
    section = re.search(r"^    command:\n((?:\s+- .*\n)+)", block, re.MULTILINE)
    assert section, block
    return [item.strip().strip("'\"") for item in re.findall(r"^\s+- (.*)$", section.group(1), re.MULTILINE)]


def _mounts(block: str, volume: str, target: str) -> bool:
    short = re.search(rf"- {re.escape(volume)}:{re.escape(target)}(:rw)?\s*$", block, re.MULTILINE)
    long = re.search(rf"source: {re.escape(volume)}\n\s+target: {re.escape(target)}\s*$", block, re.MULTILINE)
    return bool(short or long)


def _publishes(block: str, host_ip: str, published: int, target: int) -> bool:
    """A port mapping, as compose v1 (``- 127.0.0.1:8080:8080/tcp``) or v2 (long syntax) renders it."""
    short = re.search(rf"^\s+- '?{re.escape(host_ip)}:{published}:{target}(/tcp)?'?\s*$", block, re.MULTILINE)
    section = re.search(r"^    ports:\n((?:      .*\n)+)", block, re.MULTILINE)
    long = section and all(re.search(pat, section.group(1), re.MULTILINE) for pat in (
        rf"host_ip: {re.escape(host_ip)}$", rf"target: {target}$", rf"published: ['\"]?{published}['\"]?$"))
    return bool(short or long)


def _env(block: str, name: str) -> str:
    match = re.search(rf"^\s+{name}: (.*(?:\n {{8,}}(?!\w+:).*)*)", block, re.MULTILINE)
    assert match, f"{name} not in\n{block}"
    return " ".join(match.group(1).split()).strip("'\"")


@needs_compose
def test_topics_match_the_contract(rendered: str) -> None:
    init = _service_block(rendered, "topic-init")
    assert sorted(_env(init, "WATTMIX_TOPICS").split()) == sorted(ALL_TOPICS)
    assert _env(init, "WATTMIX_PARTITIONS") == str(DEFAULT_PARTITIONS)
    assert "kafka-topics.sh" in init and "--if-not-exists" in init
    assert "image: apache/kafka:3.9.0" in init
    # auto-created topics on the broker get the same count
    assert _env(_service_block(rendered, "kafka"), "KAFKA_NUM_PARTITIONS") == str(DEFAULT_PARTITIONS)


@needs_compose
def test_kafka_is_kraft_with_a_healthcheck(rendered: str) -> None:
    kafka = _service_block(rendered, "kafka")
    assert "image: apache/kafka:3.9.0" in kafka
    assert _env(kafka, "KAFKA_PROCESS_ROLES") == "broker,controller"
    assert _env(kafka, "KAFKA_CONTROLLER_QUORUM_VOTERS") == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in _env(kafka, "KAFKA_ADVERTISED_LISTENERS")
    assert _env(kafka, "CLUSTER_ID")
    assert "healthcheck:" in kafka and "kafka-broker-api-versions.sh" in kafka
    assert _mounts(kafka, "kafka-data", "/var/lib/kafka/data")


@needs_compose
def test_worker_and_feed_commands_and_ordering(rendered: str) -> None:
    worker = _service_block(rendered, "worker")
    assert _command(worker) == ["wattmix", "worker", "--kafka", "kafka:9092", "--db", "/data/wattmix.duckdb",
                                "--web-port", "8080", "--web-bind", "0.0.0.0"]
    # the dashboard / metrics port reaches the host, on its loopback only (no authentication)
    assert _publishes(worker, "127.0.0.1", 8080, 8080), worker
    assert _mounts(worker, "wattmix-data", "/data")
    assert re.search(r"topic-init:\n\s+condition: service_completed_successfully", worker)
    assert re.search(r"kafka:\n\s+condition: service_healthy", worker)

    feed = _service_block(rendered, "feed")
    assert _command(feed) == ["wattmix", "publish-demo", "--kafka", "kafka:9092"]
    assert re.search(r"topic-init:\n\s+condition: service_completed_successfully", feed)

    topic_init = _service_block(rendered, "topic-init")
    assert re.search(r"kafka:\n\s+condition: service_healthy", topic_init)


def test_dockerfile_installs_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    # the whole tree is copied, and .dockerignore keeps no shipped package out of the image
    assert re.search(r"^COPY \. \.$", text, re.MULTILINE)
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    pyproject = (ROOT / "pyproject.toml").read_text()
    shipped = re.findall(r'"(\w+)\*"', pyproject.split("[tool.setuptools]")[1].split("\n\n")[0])
    assert {"wattmix", "schemas", "dispatch", "streams", "sinks"} <= set(shipped)
    for package in shipped:
        assert package not in ignored and (ROOT / package / "__init__.py").exists(), package
