"""``armlab dev up|down|status``: both services under ``<home>/dev``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armlab.adapters.db import migrate as db_migrate
from armlab.tools.devstack.common import (
    LOOPBACK,
)
from armlab.tools.devstack.kafka import KafkaBroker
from armlab.tools.devstack.postgres import PostgresServer

# --------------------------------------------------------------------------------------------
# the dev stack (armlab dev up|down|status)


@dataclass
class DevStack:
    """Both services under ``<home>/dev`` plus an ``env`` file a shell can source."""

    home: Path

    @property
    def root(self) -> Path:
        return Path(self.home).resolve() / "dev"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    def postgres(self) -> PostgresServer:
        return PostgresServer(self.root / "postgres")

    def kafka(self) -> KafkaBroker:
        return KafkaBroker(self.root / "kafka")

    def env(self) -> dict[str, str]:
        pg, kafka = self.postgres(), self.kafka()
        return {"ARMLAB_DATABASE_URL": pg.url, "ARMLAB_KAFKA_BOOTSTRAP": kafka.bootstrap,
                "ARMLAB_TRANSPORT": "kafka"}

    def up(self, progress: Callable[[str], None] = lambda _m: None, migrate: bool = True
           ) -> dict[str, str]:
        self.root.mkdir(parents=True, exist_ok=True)
        pg = self.postgres()
        if pg.is_running():
            progress(f"PostgreSQL already running on {LOOPBACK}:{pg.port} (pid {pg.pid})")
        else:
            progress(f"starting PostgreSQL on {LOOPBACK}:{pg.port} ({pg.data_dir})")
            pg.start()
            progress(f"PostgreSQL ready on {LOOPBACK}:{pg.port} (pid {pg.pid})")
        kafka = self.kafka()
        if kafka.is_running():
            progress(f"Kafka already running on {kafka.bootstrap} (pid {kafka.pid})")
        else:
            progress(f"starting Kafka on {kafka.bootstrap} ({kafka.data_dir})")
            kafka.start(progress=progress)
            progress(f"Kafka {kafka.version} ready on {kafka.bootstrap} (pid {kafka.pid})")
        if migrate:
            db_migrate.upgrade(pg.url)
            progress(f"database migrated to {db_migrate.current(pg.url)}")
        env = self.env()
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        return env

    def down(self, progress: Callable[[str], None] = lambda _m: None) -> None:
        for svc, name in ((self.kafka(), "Kafka"), (self.postgres(), "PostgreSQL")):
            if svc.is_running():
                progress(f"stopping {name} (pid {svc.pid})")
                svc.stop()
            else:
                progress(f"{name} not running")

    def status(self) -> list[dict[str, Any]]:
        return [self.postgres().describe(), self.kafka().describe()]
