"""`armlab serve`, `armlab consume` and `armlab allocate` as subprocesses on the test's
PostgreSQL and Kafka (fresh topics and consumer group), for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.entrypoints.test_cli_live import free_port, wait_until_ready

ARMLAB = str(Path(sys.executable).with_name("armlab"))


@contextmanager
def live_stack(pg_url: str, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str],
               tmp_path: Path) -> Iterator[str]:
    """The three processes, auth off, a 0.2 s snapshot refresh and a 0.3 s allocator
    cadence; yields the API's URL and stops them all on exit."""
    port = free_port()
    env = {
        **os.environ,
        "ARMLAB_DATABASE_URL": pg_url, "ARMLAB_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ARMLAB_TRANSPORT": "kafka", "ARMLAB_AUTH_DISABLED": "true",
        "ARMLAB_TOPIC_IMPRESSIONS": kafka_topic_factory(2, "imp"),
        "ARMLAB_TOPIC_FEEDBACK": kafka_topic_factory(2, "fb"),
        "ARMLAB_TOPIC_DLQ": kafka_topic_factory(1, "dlq"),
        "ARMLAB_CONSUMER_GROUP": f"g-{uuid.uuid4().hex[:6]}",
        "ARMLAB_SNAPSHOT_REFRESH_S": "0.2", "ARMLAB_HOME": str(tmp_path / "home"),
        "ARMLAB_LOG_LEVEL": "WARNING",
    }
    cmds = {"serve": [ARMLAB, "serve", "--host", "127.0.0.1", "--port", str(port)],
            "consume": [ARMLAB, "consume"],
            "allocate": [ARMLAB, "allocate", "--interval", "0.3"]}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: (tmp_path / f"{name}.log") for name in cmds}
    try:
        for name, cmd in cmds.items():
            with logs[name].open("wb") as out:
                procs[name] = subprocess.Popen(cmd, env=env, stdout=out,
                                               stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, procs, logs)
        yield url
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
