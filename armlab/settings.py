"""One typed settings object, read from ``ARMLAB_*`` environment variables, built once.

Pure modules never read the environment: the entry points (CLI, API factory, consumer,
benchmarks) call :func:`get_settings` and pass what they need down. The Kafka client settings
are their own section (:class:`KafkaSettings`, ``ARMLAB_KAFKA_*``) because every Kafka client
armlab builds (the producer SDK, the consumer and its dead-letter producer, the events route,
the benchmarks) takes them from one place.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from armlab.errors import ConfigurationError, redact

DEFAULT_HOME = Path(".armlab")
#: Records one ingest batch (one transaction) takes at most; amortises the per-commit cost.
DEFAULT_INGEST_BATCH = 5000
#: Most bytes one Kafka record batch may decompress to in the consumer (a larger one is
#: dead-lettered as ``too_large``); far above any real producer's batch (librdkafka's
#: batch.size and the brokers' message.max.bytes default to about 1 MB).
DEFAULT_INGEST_MAX_BATCH_BYTES = 32 * 1024 * 1024


class KafkaSettings(BaseSettings):
    """How armlab's Kafka clients reach the cluster. Every field is ``ARMLAB_KAFKA_<FIELD>``.

    ``security_protocol`` SSL / SASL_SSL use the TLS files (a private CA in ``ssl_cafile``;
    ``ssl_certfile`` + ``ssl_keyfile`` for mutual TLS); SASL_PLAINTEXT / SASL_SSL need a SASL
    mechanism, user name and password. Passwords are secrets: never printed, only handed to
    the client constructor by :meth:`client_config`.
    """

    model_config = SettingsConfigDict(env_prefix="ARMLAB_KAFKA_", extra="ignore", frozen=True)

    bootstrap: str = Field(
        "127.0.0.1:19092", min_length=1, description="Bootstrap servers, comma-separated."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (PEM), mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client private key (PEM), mutual TLS.")
    ssl_password: SecretStr | None = Field(None, description="Password of the private key.")
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl:
            missing = [f"ARMLAB_KAFKA_{name.upper()}" for name in
                       ("sasl_mechanism", "sasl_username", "sasl_password")
                       if getattr(self, name) in (None, "")]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs "
                                 f"{', '.join(missing)}")
        elif self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs security_protocol "
                             "SASL_PLAINTEXT or SASL_SSL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (mutual TLS)")
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if "SSL" not in self.security_protocol and any(f is not None for f in tls_files):
            raise ValueError("TLS files need security_protocol SSL or SASL_SSL")
        for f in tls_files:
            if f is not None and not f.is_file():
                raise ValueError(f"TLS file {f} does not exist")
        return self

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer / KafkaConsumer / admin client."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if "SSL" in self.security_protocol:
            cfg["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    cfg[name] = str(value)
            if self.ssl_password is not None:
                cfg["ssl_password"] = self.ssl_password.get_secret_value()
        return cfg


class Settings(BaseSettings):
    """armlab configuration. Every field is ``ARMLAB_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ARMLAB_", extra="ignore", frozen=True)

    home: Path = Field(DEFAULT_HOME, description="Working directory for embedded state.")
    database_url: str = Field(
        "sqlite:///.armlab/armlab.db",
        description="SQLAlchemy URL; postgresql+psycopg://... in production, SQLite embedded.",
    )
    transport: Literal["kafka", "memory"] = Field(
        "kafka", description="Event bus: a real Kafka cluster or the embedded in-process bus."
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="Kafka client settings (ARMLAB_KAFKA_*)."
    )
    topic_impressions: str = "armlab.impressions"
    topic_feedback: str = "armlab.feedback"
    topic_dlq: str = "armlab.dlq"
    consumer_group: str = "armlab-ingest"
    ingest_batch: int = Field(
        DEFAULT_INGEST_BATCH, ge=1, le=100_000,
        description="Most records one ingest batch (transaction) takes.",
    )
    ingest_max_batch_bytes: int = Field(
        DEFAULT_INGEST_MAX_BATCH_BYTES, ge=1024 * 1024, le=1024**3,
        description="Most bytes the consumer decompresses one Kafka record batch to; a batch "
        "that decompresses to more (a compression bomb) is dead-lettered as `too_large` "
        "without being held in memory whole.",
    )
    gc_freeze: bool = Field(
        True,
        description="Freeze the objects built at API start-up out of the cyclic garbage "
                    "collector (gc.freeze), so full collections stay short.",
    )
    lag_report_interval_s: float = Field(
        2.0, ge=0, le=3600,
        description="How often a consumer records its per-partition lag in the database "
                    "(the dashboard's health panel).",
    )
    ingest_max_clock_skew_s: float = Field(
        300.0, ge=0, le=30 * 86400,
        description="The consumer dead-letters events stamped (served_at / occurred_at) more "
                    "than this many seconds after its own clock as `from_future`.",
    )
    auth_tokens: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated name:role:secret triples; roles admin, producer, reader.",
    )
    auth_throttle_failures: int = Field(
        5, ge=0, le=10_000,
        description="Failed authentication attempts (wrong bearer tokens per client address; "
        "wrong dashboard sign-ins per address and per token name typed) allowed before "
        "exponential back-off starts (1 s, 2 s, 4 s, ... answered 429 with Retry-After); "
        "0 turns the throttle off.",
    )
    auth_throttle_max_s: float = Field(
        60.0, ge=1, le=3600,
        description="Longest back-off of the authentication throttle, in seconds.",
    )
    auth_disabled: bool = Field(
        False, description="Only for the embedded demo: every request acts as admin."
    )
    api_url: str = Field("http://127.0.0.1:8000", description="Where the CLI finds the API.")
    token: SecretStr = Field(SecretStr(""), description="Bearer token the CLI sends.")
    allocator_interval_s: float = Field(5.0, gt=0, description="Allocator cadence in seconds.")
    snapshot_refresh_s: float = Field(
        1.0, gt=0, description="How often the API reloads the latest allocation snapshot."
    )
    scoring_device: Literal["auto", "cpu", "cuda"] = "auto"
    scoring_threads: int = Field(
        0, ge=0, description="torch CPU threads for scoring (0 = torch default)."
    )
    models_dir: Path | None = Field(
        None, description="Extra directory searched for local model files."
    )
    assign_fast_path: bool = Field(
        True,
        description="Serve valid cached /assign requests from an ASGI fast path (off: the "
        "plain FastAPI route, the benchmark's baseline).",
    )
    obd_dir: Path | None = Field(
        None, description="Open Bandit Dataset sample (random/ and bts/ folders); unset: "
        "shared/data/obd or ../shared/data/obd below the working directory."
    )
    kafka_libs: Path | None = Field(
        None, description="Kafka broker jars for `armlab dev up` (fetched there once with "
        "Maven); unset: <home>/kafka-libs."
    )
    pg_bin: Path | None = Field(
        None, description="Directory with PostgreSQL's initdb and postgres for `armlab dev "
        "up`; unset: $PATH, then Debian's /usr/lib/postgresql/<version>/bin."
    )
    ui_secret: SecretStr = Field(
        SecretStr(""),
        description="Key that signs the dashboard's session cookies (/ui); unset: a random key "
        "per process, so sessions end when `armlab serve` restarts and several API processes "
        "do not share sessions.",
    )
    ui_session_ttl_s: int = Field(
        8 * 3600, ge=60,
        description="Idle timeout of a dashboard session, in seconds: one not used for this "
        "long ends (each request renews it, up to ARMLAB_UI_SESSION_MAX_S).",
    )
    ui_session_max_s: int = Field(
        12 * 3600, ge=60,
        description="Absolute lifetime of a dashboard session, in seconds from sign-in, "
        "however active it is; then the user signs in again.",
    )
    ui_cookie_secure: bool = Field(
        False, description="Mark the dashboard's cookies Secure (set it when served over HTTPS)."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=1024**3,
        description="Largest request body the API reads; larger ones get 413 before any "
        "reading or authentication.",
    )
    api_db_timeout_s: float = Field(
        5.0, ge=0, le=3600,
        description="API only: a database call of a request still in progress after this many "
        "seconds has its connection cut, so a hung PostgreSQL gives 503 instead of a hung "
        "request; 0 disables.",
    )
    events_publish_timeout_s: float = Field(
        3.0, gt=0, le=120,
        description="API only: longest a POST /v1/events waits for Kafka (connecting, topic "
        "metadata, the acknowledgement of every event); past it the request answers 503 with "
        "Retry-After.",
    )
    events_max_waiting: int = Field(
        32, ge=1, le=1024,
        description="API only: most POST /v1/events requests waiting on Kafka at once, each in "
        "a thread of the route's own pool (never the pool the other routes share); further "
        "ones answer 503 at once.",
    )
    events_breaker_s: float = Field(
        5.0, ge=0, le=300,
        description="API only: after a publish fails (Kafka unreachable or too slow), further "
        "POST /v1/events answer 503 at once for this many seconds; then one request tries "
        "Kafka again while the others keep answering 503. 0 disables the breaker.",
    )
    retention_days: float = Field(
        90.0, ge=0, le=36_500,
        description="PostgreSQL only: days of raw impressions and feedback kept (weekly time "
        "partitions older than this plus one day are dropped; the consumer refuses events "
        "older than this as `expired`); 0 keeps them forever. Aggregated statistics are "
        "never dropped. Must exceed the longest attribution window plus feedback delay.",
    )
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str) -> str:
        if not v.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "ARMLAB_DATABASE_URL must start with sqlite:// or postgresql+psycopg://, got "
                f"{redact(v)!r}"
            )
        return v

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _flatten(exc: ValidationError, prefix: str) -> ConfigurationError:
    parts = []
    for e in exc.errors():
        name = "_".join(str(p) for p in e["loc"]).upper()
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{prefix}{name}: {msg}" if name else f"{prefix.rstrip('_')}: {msg}")
    return ConfigurationError("; ".join(parts))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build settings once from the environment; fail fast with a message naming the variable."""
    try:
        kafka = KafkaSettings()
    except ValidationError as exc:
        raise _flatten(exc, "ARMLAB_KAFKA_") from None
    try:
        return Settings(kafka=kafka)
    except ValidationError as exc:
        raise _flatten(exc, "ARMLAB_") from None
