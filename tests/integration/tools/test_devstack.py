"""Restart/kill of the shared services keeps their port and data; failures are clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from armlab.errors import ConfigurationError
from armlab.tools.devstack import (
    KafkaBroker,
    PostgresServer,
    ServiceStartError,
    _cluster_id,
    find_pg_bin,
)

REPO = Path(__file__).resolve().parents[3]


def _count(pg_server, db_url: str) -> int:
    dbname = db_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server.conninfo(dbname)) as conn:
        return conn.execute("SELECT count(*) FROM survivors").fetchone()[0]


def test_postgres_restart_and_crash_keep_port_and_data(pg_server, pg_url):
    dbname = pg_url.rsplit("/", 1)[1]
    port = pg_server.port
    with psycopg.connect(pg_server.conninfo(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors (x int)")
        conn.execute("INSERT INTO survivors VALUES (1), (2)")
    old_pid = pg_server.pid
    pg_server.restart()
    assert pg_server.port == port and pg_server.pid != old_pid
    assert _count(pg_server, pg_url) == 2
    # a crash (SIGKILL of the postmaster) followed by start() runs recovery; committed rows stay
    pg_server.kill()
    assert not pg_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.conninfo(), connect_timeout=2)
    pg_server.start()
    assert pg_server.port == port
    assert _count(pg_server, pg_url) == 2


def test_kafka_restart_keeps_port_and_topics(kafka, kafka_topic_factory):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = kafka_topic_factory(partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    producer.send(topic, b"before-restart", partition=1).get(timeout=30)
    producer.close()
    port, old_pid = kafka.port, kafka.pid
    kafka.restart()
    assert kafka.port == port and kafka.pid != old_pid
    assert topic in kafka.list_topics()
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, consumer_timeout_ms=15000)
    tp = TopicPartition(topic, 1)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    values = [m.value for m in consumer]
    consumer.close()
    assert values == [b"before-restart"]


def test_cluster_id_is_kafka_uuid_form():
    for _ in range(50):
        cid = _cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")


def test_missing_postgres_binaries_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="apt-get install postgresql"):
        find_pg_bin(tmp_path)
    with pytest.raises(ConfigurationError, match="apt-get install postgresql"):
        PostgresServer(tmp_path / "pg", bin_dir=tmp_path).start()


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(ConfigurationError, match="Java 17"):
        KafkaBroker(tmp_path / "k").start()


def test_kafka_that_cannot_bind_reports_its_log(tmp_path):
    """A broker whose port is taken exits; the error carries the broker's own log lines."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        broker = KafkaBroker(tmp_path / "k", port=port, die_with_parent=True, start_timeout=90)
        try:
            with pytest.raises(ServiceStartError) as info:
                broker.start()
        finally:
            broker.stop()
    assert "Kafka exited during start-up" in str(info.value)
    assert info.value.log_tail.strip(), "the error should include the broker log tail"


def test_fixture_fails_not_skips_when_postgres_is_missing(tmp_path):
    """The real conftest fixture turns a start failure into a FAILED test with the reason."""
    env = dict(os.environ, ARMLAB_PG_BIN=str(tmp_path / "nowhere"))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/integration/tools/test_fixtures.py::test_pg_url_is_fresh_and_migrated"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "PostgreSQL could not start" in out and "apt-get install postgresql" in out, out
    assert "skipped" not in out.lower(), out
