"""``wattmix`` command line: one sub-command per way people run it.

    wattmix demo        the main job: embedded broker + worker + one-week scenario + summary
    wattmix worker      the streaming worker (Faust) against a real Kafka
    wattmix actuator    carry out the actions on miners and GPU jobs (adapters/)
    wattmix broker      the embedded development broker (tansu) on loopback
    wattmix publish-demo  publish the built-in scenario to Kafka (docker-compose feed service)
    wattmix sql         read-only SQL on the DuckDB archive
    wattmix backtest    the engine in process over historical files, with baselines
    wattmix replay      historical files into the Kafka topics, merged in event time
    wattmix report      a self-contained HTML report (charts) from the archive
    wattmix export      the archive as hive-partitioned Parquet
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from wattmix.errors import WattmixError

DEFAULT_KAFKA = os.environ.get("WATTMIX_KAFKA", "127.0.0.1:9092")
DEFAULT_DB = os.environ.get("WATTMIX_DB", "wattmix.duckdb")


def _cmd_demo(args: argparse.Namespace) -> int:
    from wattmix.demo import run_demo

    return run_demo(db=args.db, seed=args.seed, days=args.days, jobs=args.jobs, quiet=args.quiet)


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    kw = {} if args.max_future_s is _WORKER_DEFAULT else {"max_future_s": args.max_future_s}
    if args.archive_memory_mb is not _WORKER_DEFAULT:
        kw["archive_memory_mb"] = args.archive_memory_mb
    return run_worker(kafka=args.kafka, db=args.db, site_files=args.site, partitions=args.partitions,
                      group=args.group, topic_suffix=args.topic_suffix, web_port=args.web_port,
                      web_bind=args.web_bind, **kw)


#: an option not given: the worker setting's own default applies (one source of the value)
_WORKER_DEFAULT = object()


def _seconds_or_off(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0 or 'off', got {text!r}")
    return value


def _cmd_actuator(args: argparse.Namespace) -> int:
    from adapters.actuator_config import run_actuator_cli

    return run_actuator_cli(args)


def _cmd_broker(args: argparse.Namespace) -> int:
    from wattmix.broker import run_broker_cli

    return run_broker_cli(port=args.port, partitions=args.partitions)


def _cmd_publish_demo(args: argparse.Namespace) -> int:
    from wattmix.demo import publish_demo_cli

    return publish_demo_cli(kafka=args.kafka, seed=args.seed, days=args.days, jobs=args.jobs)


def _cmd_sql(args: argparse.Namespace) -> int:
    from sinks.query import run_sql_cli

    return run_sql_cli(db=args.db, sql=args.query, fmt=args.format)


def _cmd_backtest(args: argparse.Namespace) -> int:
    from dispatch.backtest import run_backtest_cli

    return run_backtest_cli(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from wattmix.replay import run_replay_cli

    return run_replay_cli(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from wattmix.report import run_report_cli

    return run_report_cli(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from wattmix.export import run_export_cli

    return run_export_cli(args)


def build_parser() -> argparse.ArgumentParser:
    from wattmix import __version__

    p = argparse.ArgumentParser(prog="wattmix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"wattmix {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the one-week demo end to end on an embedded broker")
    d.add_argument("--db", default="wattmix-demo.duckdb", help="DuckDB archive to (re)create")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--days", type=int, default=7)
    d.add_argument("--jobs", type=int, default=1000, help="GPU jobs in the scenario")
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    d.set_defaults(func=_cmd_demo)

    w = sub.add_parser("worker", help="run the streaming worker against Kafka")
    w.add_argument("--kafka", default=DEFAULT_KAFKA, help="bootstrap servers (env WATTMIX_KAFKA)")
    w.add_argument("--db", default=DEFAULT_DB, help="DuckDB archive (env WATTMIX_DB)")
    w.add_argument("--site", action="append", default=[], help="site TOML file (repeatable); default: the sample site")
    w.add_argument("--partitions", type=int, default=None, help="topic partitions to create if missing")
    w.add_argument("--group", default="wattmix-worker", help="consumer group (Faust app id)")
    w.add_argument("--topic-suffix", default=os.environ.get("WATTMIX_TOPIC_SUFFIX", ""),
                   help="suffix appended to every topic name (a tenant's or a test's own set)")
    w.add_argument("--web-port", type=int, default=None,
                   help="serve /metrics, /api/state and a live dashboard on WEB_BIND:PORT (default: off)")
    w.add_argument("--web-bind", default=os.environ.get("WATTMIX_WEB_BIND", "127.0.0.1"),
                   help="address the web server binds (env WATTMIX_WEB_BIND; default 127.0.0.1, "
                        "0.0.0.0 in a container; the dashboard has no authentication)")
    # argparse converts a string default (the env value) with ``type`` at parse time, and only
    # for this command
    w.add_argument("--max-future-s", type=_seconds_or_off,
                   default=os.environ.get("WATTMIX_MAX_FUTURE_S", _WORKER_DEFAULT),
                   help="dead-letter events stamped more than this many seconds ahead of the wall clock "
                        "(env WATTMIX_MAX_FUTURE_S; default: one hour, streams.app.MAX_FUTURE_S; "
                        "'off' for a simulation ahead of real time)")
    w.add_argument("--archive-memory-mb", type=int,
                   default=os.environ.get("WATTMIX_ARCHIVE_MEMORY_MB", _WORKER_DEFAULT),
                   help="DuckDB memory limit of the archive, MB (env WATTMIX_ARCHIVE_MEMORY_MB; default 64, "
                        "streams.app.WorkerSettings.archive_memory_mb; 0: DuckDB's default, 80%% of RAM)")
    w.set_defaults(func=_cmd_worker)

    a = sub.add_parser("actuator", help="carry out actions on miners and GPU jobs, report on wattmix.actuations")
    a.add_argument("--config", required=True, help="actuator TOML (docs/integrations.md)")
    a.add_argument("--kafka", default=DEFAULT_KAFKA, help="bootstrap servers (env WATTMIX_KAFKA)")
    a.add_argument("--group", default="wattmix-actuator", help="consumer group")
    a.add_argument("--miner-driver", choices=["cgminer-api", "pyasic"], default=None,
                   help="override [miners] driver of the config")
    a.set_defaults(func=_cmd_actuator)

    b = sub.add_parser("broker", help="start the embedded tansu broker on loopback")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--partitions", type=int, default=4)
    b.set_defaults(func=_cmd_broker)

    pd = sub.add_parser("publish-demo", help="publish the built-in demo scenario to Kafka")
    pd.add_argument("--kafka", default=DEFAULT_KAFKA)
    pd.add_argument("--seed", type=int, default=7)
    pd.add_argument("--days", type=int, default=7)
    pd.add_argument("--jobs", type=int, default=1000)
    pd.set_defaults(func=_cmd_publish_demo)

    s = sub.add_parser("sql", help="run a read-only SQL query on the archive")
    s.add_argument("query")
    s.add_argument("--db", default=DEFAULT_DB)
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=_cmd_sql)

    bt = sub.add_parser("backtest", help="run the engine over historical files, with baselines")
    try:
        from dispatch.backtest import add_backtest_arguments
    except ImportError:  # the backtest module is optional until present
        add_backtest_arguments = None
    if add_backtest_arguments is not None:
        add_backtest_arguments(bt)
    bt.set_defaults(func=_cmd_backtest)

    from wattmix.replay import add_replay_arguments

    rp = sub.add_parser("replay", help="publish historical files to Kafka in event-time order")
    add_replay_arguments(rp)
    rp.set_defaults(func=_cmd_replay)

    rep = sub.add_parser("report", help="write a self-contained HTML report of the archive")
    rep.add_argument("--db", default=DEFAULT_DB)
    rep.add_argument("--out", default="report.html")
    rep.add_argument("--site", default=None, help="site TOML (default: the sample site)")
    rep.set_defaults(func=_cmd_report)

    ex = sub.add_parser("export", help="export the archive to hive-partitioned Parquet")
    ex.add_argument("--db", default=DEFAULT_DB)
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--tables", default=None, help="comma-separated tables (default: all non-empty)")
    ex.add_argument("--overwrite", action="store_true", help="replace existing partitions")
    ex.set_defaults(func=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WattmixError as exc:
        print(f"wattmix: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `wattmix sql ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
