"""Helpers shared by the reliability tests (on top of tests/streams/harness.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import orjson

from schemas.codec import encode
from wattmix.demo import committed_offsets


def start_worker_env(bootstrap: str, db: Path, group: str, topic_suffix: str, log: Path,
                     env: dict[str, str] | None = None, sites: list[Path] = ()) -> subprocess.Popen:
    """``wattmix worker`` as a subprocess, like harness.start_worker, with extra env vars and
    site files (default: the sample site)."""
    cmd = [sys.executable, "-m", "wattmix", "worker", "--kafka", bootstrap, "--db", str(db),
           "--group", group, "--topic-suffix", topic_suffix]
    for site in sites:
        cmd += ["--site", str(site)]
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), start_new_session=True)


def committed(bootstrap: str, group: str, tps) -> dict:
    try:
        return asyncio.run(committed_offsets(bootstrap, group, sorted(tps)))
    except Exception:  # the group may not exist yet
        return {}


def merge_last(last: dict, more: dict) -> dict:
    out = dict(last)
    for k, v in more.items():
        out[k] = max(v, out.get(k, -1))
    return out


def check_exactly_once(db: Path, named, expected, actions: list[dict]) -> dict:
    """Assert: every produced event archived once, one action per interval on the topic (after
    de-duplication by key, re-publications identical), parity with the in-process engine, and
    the archive's actions table holds exactly the expected intervals. Returns the figures."""
    produced = Counter(name for name, _ in named)
    con = duckdb.connect(str(db), read_only=True)
    try:
        archived = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in produced}
        n_actions, n_distinct = con.execute("SELECT count(*), count(DISTINCT interval_start) FROM actions").fetchone()
        n_dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        con.close()
    assert archived == dict(produced), (archived, produced)
    by_key: dict[str, list[dict]] = {}
    for a in actions:
        by_key.setdefault(a["interval_start"], []).append(a)
    assert all(all(x == v[0] for x in v) for v in by_key.values()), "a re-published action differs"
    assert [orjson.loads(encode(e)) for e in expected] == [by_key[k][0] for k in sorted(by_key)]
    assert (n_actions, n_distinct) == (len(expected), len(expected))
    return {"produced": sum(produced.values()), "archived": sum(archived.values()), "dead_lettered": n_dead,
            "actions": len(expected), "actions_on_topic": len(actions)}


def site_ids_one_per_partition(n: int, partitions: int) -> list[str]:
    """``n`` site ids whose keys land on ``n`` distinct partitions (deterministic)."""
    from streams.takeover import key_partition

    out, used, i = [], set(), 0
    while len(out) < n:
        sid = f"site-{i:02d}"
        p = key_partition(sid.encode(), partitions)
        if p not in used:
            used.add(p)
            out.append(sid)
        i += 1
    return out


def write_site_file(directory: Path, site_id: str) -> Path:
    """The sample site under another id, as a TOML file for ``wattmix worker --site``."""
    from schemas.site import sample_site_path

    text = sample_site_path().read_text()
    assert 'site_id = "sample"' in text
    path = directory / f"{site_id}.toml"
    path.write_text(text.replace('site_id = "sample"', f'site_id = "{site_id}"', 1))
    return path


def archive_counts(db: Path, tables) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        con.close()
