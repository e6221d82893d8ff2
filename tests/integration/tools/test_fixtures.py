"""The shared service fixtures really give a migrated PostgreSQL database and a Kafka broker."""

from __future__ import annotations

import sqlalchemy as sa


def _tables(url: str) -> set[str]:
    from armlab.adapters.db.engine import make_engine

    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_pg_url_is_fresh_and_migrated(pg_url):
    from armlab.adapters.db import (
        migrate,
        models,  # noqa: F401
    )
    from armlab.adapters.db.engine import Base

    assert pg_url.startswith("postgresql+psycopg://")
    assert set(Base.metadata.tables) <= _tables(pg_url)
    assert migrate.current(pg_url) is not None
    from armlab.adapters.db.engine import make_engine

    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE scratch_marker (x int)"))
    engine.dispose()


def test_pg_url_second_database_does_not_see_first(pg_url):
    # the previous test created scratch_marker in its own database; ours must not have it
    assert "scratch_marker" not in _tables(pg_url)


def test_sqlite_url_is_migrated(sqlite_url):
    from armlab.adapters.db import models  # noqa: F401
    from armlab.adapters.db.engine import Base

    assert sqlite_url.startswith("sqlite:///")
    assert set(Base.metadata.tables) <= _tables(sqlite_url)


def test_kafka_topic_roundtrip(kafka_bootstrap, kafka_topic_factory):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = kafka_topic_factory(partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for p in range(3):
        producer.send(topic, value=f"m{p}".encode(), partition=p)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    parts = [TopicPartition(topic, p) for p in range(3)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = set()
    for msg in consumer:
        got.add(msg.value)
        if len(got) == 3:
            break
    consumer.close()
    assert got == {b"m0", b"m1", b"m2"}
    assert kafka_topic_factory() != kafka_topic_factory()
