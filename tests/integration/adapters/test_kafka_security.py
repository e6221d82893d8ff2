"""armlab's Kafka clients against a real broker that requires SASL authentication.

A second broker from the dev stack listens with SASL_PLAINTEXT (mechanism PLAIN) only. With the
right ``KafkaSettings`` the producer SDK sends and the consumer (and its dead-letter producer)
ingests into PostgreSQL; a wrong password and a plaintext client are refused. The TLS fields go
to the same constructors (tests/unit/adapters/kafka/test_settings.py checks that they arrive).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from armlab.adapters.db import queries
from armlab.adapters.db.models import Arm, Experiment
from armlab.adapters.kafka.producer import KafkaEventProducer
from armlab.bootstrap import bootstrap
from armlab.errors import ServiceUnavailable
from armlab.settings import KafkaSettings, Settings
from armlab.tools.devstack import KafkaBroker

USER, PASSWORD = "armlab-app", "s3cret-sasl-pw"


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[KafkaBroker]:
    root = Path(tempfile.mkdtemp(prefix="armlab-sasl-"))
    broker = KafkaBroker(root / "kafka", die_with_parent=True,
                         sasl_users={"admin": "admin-pw", USER: PASSWORD})
    try:
        broker.start()
    except Exception as exc:
        broker.stop()
        pytest.fail(f"SASL Kafka could not start: {exc}", pytrace=False)
    yield broker
    broker.stop()
    shutil.rmtree(root, ignore_errors=True)


def _kafka(broker: KafkaBroker, password: str = PASSWORD) -> KafkaSettings:
    return KafkaSettings(bootstrap=broker.bootstrap, security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="PLAIN", sasl_username=USER, sasl_password=password)


def test_producer_and_consumer_authenticate_and_ingest(sasl_broker: KafkaBroker,
                                                       pg_url: str) -> None:
    topics = {"topic_impressions": "sec.imp", "topic_feedback": "sec.fb",
              "topic_dlq": "sec.dlq"}
    for t in topics.values():
        sasl_broker.create_topic(t, 1)
    settings = Settings(database_url=pg_url, transport="kafka", kafka=_kafka(sasl_broker),
                        consumer_group="sec", **topics)  # type: ignore[arg-type]
    services = bootstrap(settings)
    try:
        with services.session_factory() as s, s.begin():
            e = Experiment(key="sec", name="sec", control_arm_key="a", salt="s",
                           status="running", attribution_window_s=3600)
            e.arms = [Arm(key="a", is_control=True, position=0),
                      Arm(key="b", is_control=False, position=1)]
            s.add(e)
            s.flush()
            exp_id = e.id
        with KafkaEventProducer(settings.kafka, topic_impressions="sec.imp",
                                topic_feedback="sec.fb") as producer:
            for i in range(20):
                imp = producer.send_impression(experiment_key="sec", arm_key="ab"[i % 2],
                                               unit_id=f"u{i}", propensity=0.5)
                if i % 4 == 0:
                    producer.send_feedback(impression_id=imp.impression_id,
                                           experiment_key="sec", kind="click")
            producer._producer.send("sec.imp", value=b"not json", key=b"x")
        runner = services.ingest_runner()
        try:
            counts = runner.run(exit_when_idle=3.0)
        finally:
            runner.close()
        assert counts["impression"] == 20 and counts["not_json"] == 1, counts
        with services.session_factory() as s:
            totals = queries.arm_sums(s, exp_id)
        assert totals["a"].n == 10 and totals["a"].reward_sum == 5
        assert totals["b"].n == 10 and totals["b"].reward_sum == 0
    finally:
        services.close()


@pytest.mark.parametrize("how", ["wrong password", "plaintext"])
def test_the_broker_refuses_bad_or_missing_credentials(sasl_broker: KafkaBroker,
                                                       how: str) -> None:
    kafka: Any = (_kafka(sasl_broker, password="wrong") if how == "wrong password"
                  else KafkaSettings(bootstrap=sasl_broker.bootstrap))
    with pytest.raises(ServiceUnavailable, match="Kafka"):
        producer = KafkaEventProducer(kafka, bootstrap_timeout_ms=4000, max_block_ms=4000)
        producer.send_impression(experiment_key="sec", arm_key="a", unit_id="u",
                                 propensity=0.5)
        producer.flush(timeout=5)
