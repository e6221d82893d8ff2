"""One typed settings object, read from ``ARMLAB_*`` environment variables, built once.

Pure modules never read the environment: the entry points (CLI, API factory, consumer
runner) call :func:`get_settings` and pass what they need down.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from armlab.errors import ConfigurationError

DEFAULT_HOME = Path(".armlab")


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
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers.")
    topic_impressions: str = "armlab.impressions"
    topic_feedback: str = "armlab.feedback"
    topic_dlq: str = "armlab.dlq"
    consumer_group: str = "armlab-ingest"
    auth_tokens: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated name:role:secret triples; roles admin, producer, reader.",
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
        None, description="Open Bandit Dataset sample (random/ and bts/); default: "
        "<repo>/../shared/data/obd, then <repo>/shared/data/obd."
    )
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str) -> str:
        if not v.startswith(("sqlite", "postgresql")):
            raise ValueError(
                f"ARMLAB_DATABASE_URL must start with sqlite:// or postgresql+psycopg://, got {v!r}"
            )
        return v

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build settings once from the environment; fail fast with a message naming the variable."""
    try:
        return Settings()
    except Exception as exc:  # pydantic.ValidationError: flatten to one readable line
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = [
                f"ARMLAB_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in errors()
            ]
            raise ConfigurationError("; ".join(parts)) from exc
        raise ConfigurationError(str(exc)) from exc
