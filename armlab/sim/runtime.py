"""Process wiring shared by the demo, the OBD replay, ``armlab report`` and ``armlab ope``.

Two stacks:

- ``embedded`` (default for the demo and the replay): SQLite under ``.armlab/`` and the
  in-process memory bus. Nothing to start; the same consumer, allocator, API and statistics
  code runs as in production.
- ``local``: whatever ``ARMLAB_DATABASE_URL`` / ``ARMLAB_KAFKA_BOOTSTRAP`` say, i.e. the real
  PostgreSQL and Kafka that ``armlab dev up`` started (``eval "$(armlab dev up)"``).
"""

from __future__ import annotations

from pathlib import Path

from armlab.errors import ValidationFailed
from armlab.platform.bootstrap import Services, bootstrap
from armlab.settings import Settings, get_settings

STACKS = ("embedded", "local")


def make_settings(stack: str, **overrides: object) -> Settings:
    """Settings for ``stack``; environment variables still apply to everything not forced."""
    if stack not in STACKS:
        raise ValidationFailed(f"--stack must be one of {', '.join(STACKS)}, got {stack!r}",
                               field="stack")
    base = get_settings()
    if stack == "embedded":
        home = Path(base.home)
        url = base.database_url if base.is_sqlite else f"sqlite:///{home / 'armlab.db'}"
        forced: dict[str, object] = {"transport": "memory", "database_url": url,
                                     "auth_disabled": True}
    else:
        forced = {"transport": "kafka"}
    forced.update(overrides)
    return base.model_copy(update=forced)


def open_services(settings: Settings, *, migrate: bool = True) -> Services:
    """Bootstrap services, creating the SQLite folder and upgrading the schema to head."""
    if settings.is_sqlite:
        path = settings.database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if migrate:
        from armlab.platform.migrate import upgrade

        upgrade(settings.database_url)
    return bootstrap(settings)


def unique_key(session_factory: object, base: str) -> str:
    """``base`` or ``base-2``, ``base-3``... whichever is not registered yet."""
    from sqlalchemy import select

    from armlab.platform.models import Experiment

    with session_factory() as s:  # type: ignore[operator]
        taken = set(s.scalars(select(Experiment.key).where(Experiment.key.like(f"{base}%"))))
    if base not in taken:
        return base
    i = 2
    while f"{base}-{i}" in taken:
        i += 1
    return f"{base}-{i}"
