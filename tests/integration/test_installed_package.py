"""armlab installed as a package (not editable, not from the checkout) finds its own files.

The checkout is installed with ``pip install --no-deps --target`` into a temporary folder and
run from another folder, so nothing can be found through the repository layout: the Alembic
revisions and the Kafka pom must come from the package, the OBD sample from settings. Then
``armlab dev up`` starts a real PostgreSQL + Kafka and migrates, ``armlab replay obd --stack
local`` streams real logged data through the SDK, Kafka and the consumers into that PostgreSQL,
and ``armlab dev down`` stops the stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _obd_dir() -> str:
    configured = os.environ.get("ARMLAB_OBD_DIR")
    if configured:
        return configured
    for cand in (REPO / "shared" / "data" / "obd", REPO.parent / "shared" / "data" / "obd"):
        if (cand / "random").is_dir():
            return str(cand)
    raise AssertionError("the Open Bandit Dataset sample is missing: set ARMLAB_OBD_DIR")


def test_installed_package_runs_dev_stack_and_replay() -> None:
    root = Path(tempfile.mkdtemp(prefix="armlab-installed-"))
    root.chmod(0o755)  # PostgreSQL runs as `postgres` under root and must reach its data dir
    site, work = root / "site", root / "work"
    work.mkdir()
    try:
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(site), str(REPO)],
            capture_output=True, text=True, timeout=300)
        assert pip.returncode == 0, pip.stderr[-2000:]
        assert (site / "armlab" / "tools" / "kafka" / "pom.xml").is_file()
        assert (site / "armlab" / "adapters" / "db" / "migrations" / "versions").is_dir()

        env = {k: v for k, v in os.environ.items() if not k.startswith("ARMLAB_")}
        env.update(PYTHONPATH=str(site), ARMLAB_HOME=str(root / "home"),
                   ARMLAB_OBD_DIR=_obd_dir())
        if os.environ.get("ARMLAB_KAFKA_LIBS"):  # the jars `make setup` fetched (saves a copy)
            env["ARMLAB_KAFKA_LIBS"] = os.environ["ARMLAB_KAFKA_LIBS"]

        def armlab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "armlab", *args], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=timeout)

        where = subprocess.run([sys.executable, "-c", "import armlab; print(armlab.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True, check=True)
        assert where.stdout.strip().startswith(str(site)), where.stdout

        up = armlab("dev", "up")
        try:
            assert up.returncode == 0, up.stderr[-3000:]
            assert "database migrated to" in up.stderr
            assert all(line.startswith("export ARMLAB_") for line in up.stdout.splitlines())

            # the stack `dev up` started, as `eval "$(armlab dev up)"` would configure it
            for line in up.stdout.splitlines():
                k, v = line.removeprefix("export ").split("=", 1)
                env[k] = v
            replay = armlab("replay", "obd", "--campaign", "men", "--limit", "400",
                            "--stack", "local", "--json")
            assert replay.returncode == 0, replay.stderr[-3000:]
            out = json.loads(replay.stdout)
            assert out["ingested"]["random"]["impressions"] == 400
            assert out["ingested"]["bts"]["impressions"] == 400
            assert out["ope_from_random_log"]["ipw"]["n_events"] == 400
        finally:
            down = armlab("dev", "down")
        assert down.returncode == 0, down.stderr[-2000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
