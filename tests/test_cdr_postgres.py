"""The PostgreSQL sink against a real server (a throwaway cluster the suite starts), and
its spool (against a port nobody listens on, which needs no server)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipguard.cdr import admin
from sipguard.cdr import writer as writer_mod
from sipguard.cdr.postgres_sink import TABLE, PostgresSink
from sipguard.cdr.record import (
    CdrRecord,
    end_record,
    epoch_ms,
    make_call_id,
    parse_ms,
    start_record,
)
from sipguard.cdr.recovery import recover
from sipguard.cdr.retention import purge
from sipguard.cdr.sink import SinkUnavailableError, SpoolFullError
from sipguard.cdr.state import instance_tag, write_heartbeat
from sipguard.cdr.writer import CdrWriter
from sipguard.config.model import CdrConfig, Config, Numbering, Trunk
from sipguard.metrics import Metrics
from testkit.pgserver import PgCluster, pg_cluster, pg_dsn
from testkit.sipp import free_port

__all__ = ["pg_cluster", "pg_dsn"]  # fixtures, imported to be found

NOW = time.time()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(writer_mod, "MAINTAIN_SECONDS", 0.05)


def cfg_for(tmp_path: Path, dsn: str, **kw: object) -> CdrConfig:
    return CdrConfig(
        sink="postgres",
        dsn=dsn,
        path=str(tmp_path / "state"),
        spool_path=str(tmp_path / "spool"),
        **kw,  # type: ignore[arg-type]
    )


def call(
    call_id: str, t: float, *, caller: str = "+31201234567", presentation: str = "allowed"
) -> tuple[CdrRecord, CdrRecord]:
    common = {
        "call_id": call_id,
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": caller,
        "callee": "+31207654321",
        "presentation": presentation,
        "emergency": False,
        "start": t,
    }
    s = start_record(answer=t + 2.5, **common)  # type: ignore[arg-type]
    e = end_record(answer=t + 2.5, end=t + 62.125, status=200, end_reason="callee_bye", **common)  # type: ignore[arg-type]
    return s, e


def wait_for(cond: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def rows(cluster: PgCluster, dsn: str, sql: str) -> str:
    return cluster.psql(sql, database=dsn.rsplit("/", 1)[1])


def count(cluster: PgCluster, dsn: str) -> int:
    try:
        return int(rows(cluster, dsn, f"SELECT count(*) FROM {TABLE}"))
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            return 0  # not created yet
        raise


def spool_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").glob("spool-*.jsonl"))


@pytest.mark.postgres
def test_records_arrive_with_every_field(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    metrics = Metrics()
    w = CdrWriter(cfg_for(tmp_path, pg_dsn), metrics)
    w.start()
    sent: list[CdrRecord] = []
    for i in range(50):
        s, e = call(
            w.new_call_id(), NOW - 3600 + i, presentation="restricted" if i % 2 else "allowed"
        )
        w.submit(s)
        w.submit(e)
        sent += [s, e]
    assert w.close(20)
    assert count(pg_cluster, pg_dsn) == 100
    # a start and an end record of the same call both arrive
    assert rows(pg_cluster, pg_dsn, f"SELECT count(DISTINCT id) FROM {TABLE}") == "50"
    sink = PostgresSink(cfg_for(tmp_path, pg_dsn))
    back = sorted(sink.iter_records(None, None), key=lambda r: r.key)
    sink.close()
    assert back == sorted(sent, key=lambda r: r.key)  # every field, to the millisecond
    assert (
        metrics.registry.get_sample_value(
            "sipguard_cdr_records_total", {"sink": "postgres", "result": "written"}
        )
        == 100
    )


@pytest.mark.postgres
def test_upsert_is_idempotent(tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str) -> None:
    sink = PostgresSink(cfg_for(tmp_path, pg_dsn), writable=True)
    batch = [r for i in range(10) for r in call(make_call_id("0123abcd"), NOW - i)]
    assert sink.write_batch(batch).written == 20
    assert sink.write_batch(batch).written == 20  # delivered again: stored once
    assert sink.write_batch(batch[:3] + batch[:3]).written == 6
    sink.close()
    assert count(pg_cluster, pg_dsn) == 20


@pytest.mark.postgres
def test_database_stopped_mid_run_loses_none_doubles_none(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    metrics = Metrics()
    w = CdrWriter(cfg_for(tmp_path, pg_dsn), metrics)
    w.start()

    def sample(result: str) -> float:
        v = metrics.registry.get_sample_value(
            "sipguard_cdr_records_total", {"sink": "postgres", "result": result}
        )
        return v or 0.0

    sent: list[CdrRecord] = []

    def submit(n: int) -> None:
        for _ in range(n):
            s, e = call(w.new_call_id(), NOW - 60)
            w.submit(s)
            w.submit(e)
            sent.extend((s, e))

    submit(100)
    wait_for(lambda: sample("written") == 200)
    pg_cluster.stop("fast")
    try:
        submit(150)  # while the database is down: to the spool
        wait_for(lambda: sample("spooled") == 300 and w.pending() == 0)
        assert spool_files(tmp_path)
        assert w.accepting_calls()  # the spool has room: calls go on
    finally:
        pg_cluster.start()
    submit(50)  # behind the spool, in order
    wait_for(lambda: sample("written") == 600)
    assert w.close(20)
    assert count(pg_cluster, pg_dsn) == 600
    keys = rows(pg_cluster, pg_dsn, f"SELECT id || ':' || kind FROM {TABLE}").split()
    assert sorted(keys) == sorted(f"{r.id}:{r.kind}" for r in sent)
    assert spool_files(tmp_path) == []


@pytest.mark.postgres
def test_full_spool_refuses_then_delivers_everything(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    w = CdrWriter(cfg_for(tmp_path, pg_dsn, spool_max_bytes=4000), Metrics())
    w.start()
    s, e = call(w.new_call_id(), NOW)
    w.submit(s)
    wait_for(lambda: count(pg_cluster, pg_dsn) == 1)
    sent = [s]
    pg_cluster.stop("fast")
    try:
        for _ in range(20):
            s, e = call(w.new_call_id(), NOW)
            w.submit(s)
            w.submit(e)
            sent += [s, e]
        wait_for(lambda: not w.accepting_calls())
        assert 0 < w.pending() < 40
    finally:
        pg_cluster.start()
    wait_for(w.accepting_calls)
    assert w.close(20)
    assert count(pg_cluster, pg_dsn) == 41
    assert spool_files(tmp_path) == []


@pytest.mark.postgres
def test_crash_recovery_closes_only_this_instances_calls(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    cfg = cfg_for(tmp_path, pg_dsn)
    mine = instance_tag(cfg.path)
    other = "ffffffff" if mine != "ffffffff" else "eeeeeeee"
    sink = PostgresSink(cfg, writable=True)
    s_open, _ = call(make_call_id(mine), NOW - 600)
    s_done, e_done = call(make_call_id(mine), NOW - 500)
    s_other, _ = call(make_call_id(other), NOW - 400)  # another instance's call in progress
    sink.write_batch([s_open, s_done, e_done, s_other])
    sink.close()
    alive = NOW - 300
    write_heartbeat(cfg.path, alive)
    assert recover(cfg, NOW) == 1
    got = rows(
        pg_cluster,
        pg_dsn,
        f"SELECT id, end_reason, duration_ms FROM {TABLE} WHERE kind = 'end' ORDER BY id",
    ).splitlines()
    answer_ms = parse_ms(s_open.answer or "")
    assert f"{s_open.id}|crash_recovered|{epoch_ms(alive) - answer_ms}" in got
    assert f"{e_done.id}|callee_bye|{e_done.duration_ms}" in got
    assert not any(g.startswith(s_other.id) for g in got)
    assert recover(cfg, NOW + 1) == 0


@pytest.mark.postgres
def test_purge_and_export(tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str) -> None:
    cfg = cfg_for(tmp_path, pg_dsn, retention_days=92)
    sink = PostgresSink(cfg, writable=True)
    old = [r for i in range(7) for r in call(make_call_id("0123abcd"), NOW - 100 * 86400 - i)]
    new = [r for i in range(3) for r in call(make_call_id("0123abcd"), NOW - 10 * 86400 - i)]
    withheld = call(
        make_call_id("0123abcd"), NOW - 5, caller="+31208888888", presentation="restricted"
    )
    sink.write_batch(old + new + list(withheld))
    summary = purge(sink, NOW, 92, dry_run=True)
    assert summary.records == 14
    assert count(pg_cluster, pg_dsn) == 22
    summary = purge(sink, NOW, 92, dry_run=False)
    assert summary.records == 14
    assert count(pg_cluster, pg_dsn) == 8
    sink.close()

    config = Config(
        source="<test>",
        listen=(),
        trunks={"pbx": Trunk(name="pbx", numbering=Numbering(country_code="31"))},
        cdr=cfg,
    )
    out = tmp_path / "export.json"
    assert admin.export(config, "020 765 4321", None, None, "json", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["number"] == "+31207654321"
    assert len(doc["records"]) == 8
    callers = {r["caller"] for r in doc["records"]}
    assert callers == {"+31201234567", "withheld"}


def test_spool_full_refuse_and_drop_without_a_server(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    records = [r for i in range(20) for r in call(make_call_id("0123abcd"), NOW - i)]
    room = sum(len(r.to_json()) + 1 for r in records[:10]) + 5
    cfg = cfg_for(tmp_path, dead, spool_max_bytes=room)
    sink = PostgresSink(cfg, writable=True, connect_timeout=2)
    with pytest.raises(SpoolFullError) as info:
        sink.write_batch(records)
    assert info.value.result.spooled == 10
    assert info.value.remaining == records[10:]
    with pytest.raises(SinkUnavailableError):
        sink.open_calls("2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z", "0123abcd")
    with pytest.raises(SinkUnavailableError):  # an export says so rather than giving half
        list(sink.iter_records(None, None))
    sink.close()

    cfg = cfg_for(tmp_path / "drop", dead, spool_max_bytes=room, on_spool_full="drop")
    sink = PostgresSink(cfg, writable=True, connect_timeout=2)
    result = sink.write_batch(records)
    assert (result.written, result.spooled, result.dropped) == (0, 10, 30)
    sink.close()


def test_the_spool_gauges_show_how_full_the_spool_is(tmp_path: Path) -> None:
    # what the "spool filling" alert (docker/prometheus/alerts.yml) reads
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    metrics = Metrics()
    w = CdrWriter(
        cfg_for(tmp_path, dead, spool_max_bytes=1_000_000), metrics, recover=False, retention=False
    )
    w.start()

    def gauge(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    try:
        for r in call(w.new_call_id(), NOW - 60):
            w.submit(r)
        wait_for(lambda: gauge("sipguard_cdr_spool_bytes") > 0)
        assert gauge("sipguard_cdr_spool_max_bytes") == 1_000_000
        assert gauge("sipguard_cdr_spool_bytes") == sum(
            f.stat().st_size for f in spool_files(tmp_path)
        )
    finally:
        w.close(5)


def test_spool_survives_a_restart_and_a_torn_line(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    cfg = cfg_for(tmp_path, dead)
    sink = PostgresSink(cfg, writable=True, connect_timeout=2)
    records = [r for i in range(5) for r in call(make_call_id("0123abcd"), NOW - i)]
    assert sink.write_batch(records).spooled == 10
    sink.close()
    (seg,) = spool_files(tmp_path)
    with seg.open("a") as f:
        f.write('{"v":1,"id":"torn')
    sink = PostgresSink(cfg, writable=True, connect_timeout=2)
    assert seg.read_text().endswith("}\n")
    assert sink.write_batch(records[:1]).spooled == 1
    sink.close()
    total = sum(len(p.read_text().splitlines()) for p in spool_files(tmp_path))
    assert total == 11
    assert os.path.getsize(seg) > 0
