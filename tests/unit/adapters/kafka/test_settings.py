"""Typed Kafka settings: validated from ARMLAB_KAFKA_*, secrets kept secret, and handed to
every Kafka client armlab builds (producer SDK, consumer and its dead-letter producer, the
events route's producer, the ingest benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from armlab.adapters.kafka import dlq as dlq_mod
from armlab.adapters.kafka import producer as producer_mod
from armlab.adapters.kafka import source as source_mod
from armlab.bootstrap import bootstrap
from armlab.errors import ConfigurationError
from armlab.settings import KafkaSettings, Settings, get_settings
from armlab.tools.bench import ingest as bench_ingest

PASSWORD = "pa55-w0rd-never-printed"


@pytest.fixture()
def secured(tmp_path: Path) -> KafkaSettings:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return KafkaSettings(bootstrap="broker-1:9093,broker-2:9093", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username="armlab",
                         sasl_password=PASSWORD, ssl_cafile=ca)


EXPECTED_KEYS = {"bootstrap_servers", "security_protocol", "sasl_mechanism",
                 "sasl_plain_username", "sasl_plain_password", "ssl_cafile",
                 "ssl_check_hostname"}


def _check(kwargs: dict[str, Any], kafka: KafkaSettings) -> None:
    assert kwargs["bootstrap_servers"] == ["broker-1:9093", "broker-2:9093"]
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "armlab"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert kwargs["ssl_cafile"] == str(kafka.ssl_cafile)


class Recorder:
    """Stands in for a kafka-python client class; remembers the keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self

    def __getattr__(self, name: str) -> Any:  # any method the adapter calls is a no-op
        return lambda *a, **k: self


def test_client_config_carries_tls_and_sasl(secured: KafkaSettings) -> None:
    cfg = secured.client_config()
    assert set(cfg) == EXPECTED_KEYS
    _check(cfg, secured)
    plain = KafkaSettings(bootstrap="127.0.0.1:9092").client_config()
    assert plain == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}


def test_settings_reach_every_client_constructor(
    secured: KafkaSettings, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    producers, consumers, admins = Recorder(), Recorder(), Recorder()
    monkeypatch.setattr(producer_mod, "KafkaProducer", producers)
    monkeypatch.setattr(dlq_mod, "KafkaProducer", producers)
    monkeypatch.setattr(source_mod, "KafkaConsumer", consumers)
    monkeypatch.setattr(bench_ingest, "KafkaProducer", producers)
    monkeypatch.setattr(bench_ingest, "KafkaConsumer", consumers)
    monkeypatch.setattr(bench_ingest, "KafkaAdminClient", admins)

    # the producer SDK
    producer_mod.KafkaEventProducer(secured)
    # the consumer and its dead-letter producer, as `armlab consume` wires them
    services = bootstrap(Settings(database_url=sqlite_url, transport="kafka", kafka=secured))
    services.ingest_runner()
    # the events route's producer
    assert services.producer is not None
    # the ingest benchmark's clients
    bench_ingest.create_topics(secured, ["t"], 1)
    bench_ingest.produce(secured, "ti", "tf", 0, "exp", "p")
    with pytest.raises(Exception):  # noqa: B017 - the recorder returns no records
        bench_ingest.bare_read(secured, ["ti"], 1)
    assert len(producers.calls) == 4 and len(consumers.calls) == 2 and len(admins.calls) == 1
    for kwargs in producers.calls + consumers.calls + admins.calls:
        _check(kwargs, secured)
    services.close()


def test_environment_variables_configure_the_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for k, v in {"ARMLAB_KAFKA_BOOTSTRAP": "k1:9094",
                 "ARMLAB_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                 "ARMLAB_KAFKA_SASL_MECHANISM": "PLAIN", "ARMLAB_KAFKA_SASL_USERNAME": "u",
                 "ARMLAB_KAFKA_SASL_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert s.kafka.bootstrap == "k1:9094" and s.kafka.sasl_mechanism == "PLAIN"
        assert s.kafka.client_config()["sasl_plain_password"] == PASSWORD
        assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ARMLAB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "ARMLAB_KAFKA_SASL_MECHANISM"),
        ({"ARMLAB_KAFKA_SECURITY_PROTOCOL": "TLS"}, "ARMLAB_KAFKA_SECURITY_PROTOCOL"),
        ({"ARMLAB_KAFKA_SASL_MECHANISM": "PLAIN"}, "needs security_protocol SASL"),
        ({"ARMLAB_KAFKA_SECURITY_PROTOCOL": "SSL", "ARMLAB_KAFKA_SSL_CAFILE": "/nope.pem"},
         "does not exist"),
        ({"ARMLAB_KAFKA_SECURITY_PROTOCOL": "SSL", "ARMLAB_KAFKA_SSL_CERTFILE": "/etc/hostname"},
         "go together"),
    ],
)
def test_bad_kafka_settings_fail_fast_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ARMLAB_KAFKA_SASL_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match=message) as err:
            get_settings()
        assert PASSWORD not in str(err.value)
    finally:
        get_settings.cache_clear()
