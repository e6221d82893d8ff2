"""`armlab dev up` -> eval its output -> `armlab db ...` -> `armlab dev status|down`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent / "armlab"


def _armlab(*args: str, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _eval_exports(text: str) -> dict[str, str]:
    """What `eval "$(armlab dev up)"` would set, checked by a real shell."""
    res = subprocess.run(["bash", "-c", 'eval "$1" && env -0', "_", text], capture_output=True,
                         text=True, check=True, env={})
    pairs = (kv.split("=", 1) for kv in res.stdout.split("\0") if "=" in kv)
    return {k: v for k, v in pairs if k.startswith("ARMLAB_")}


def test_dev_up_eval_db_current_status_down():
    # Not tmp_path: pytest's base dir is mode 0700 and PostgreSQL runs as `postgres` under root.
    root = Path(tempfile.mkdtemp(prefix="armlab-devtest-"))
    root.chmod(0o755)
    home = root / "home"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARMLAB_")}
    env = dict(base, ARMLAB_HOME=str(home))
    try:
        up = _armlab("dev", "up", env=env)
        assert up.returncode == 0, up.stderr
        assert all(line.startswith("export ARMLAB_") for line in up.stdout.splitlines()), up.stdout
        assert "PostgreSQL ready" in up.stderr and "Kafka" in up.stderr
        exported = _eval_exports(up.stdout)
        assert exported["ARMLAB_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert exported["ARMLAB_TRANSPORT"] == "kafka"
        assert exported["ARMLAB_KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
        env2 = dict(env, **exported)

        cur = _armlab("db", "current", env=env2)
        assert cur.returncode == 0 and cur.stdout.strip() != "base", cur.stdout + cur.stderr

        # idempotent: a second `up` reuses the running services and prints the same settings
        again = _armlab("dev", "up", "--no-migrate", env=env)
        assert again.returncode == 0 and "already running" in again.stderr
        assert _eval_exports(again.stdout) == exported

        down_rev = _armlab("db", "downgrade", "base", env=env2)
        assert down_rev.returncode == 0, down_rev.stderr
        assert _armlab("db", "current", env=env2).stdout.strip() == "base"
        assert _armlab("db", "upgrade", env=env2).returncode == 0

        st = _armlab("dev", "status", "--json", env=env)
        rows = {r["service"]: r for r in json.loads(st.stdout)}
        assert rows["postgresql"]["running"] and rows["kafka"]["running"]
        assert f"127.0.0.1:{rows['kafka']['port']}" == exported["ARMLAB_KAFKA_BOOTSTRAP"]
        pids = [rows["postgresql"]["pid"], rows["kafka"]["pid"]]
    finally:
        down = _armlab("dev", "down", env=env)
    assert down.returncode == 0, down.stderr
    rows = {r["service"]: r for r in json.loads(_armlab("dev", "status", "--json", env=env).stdout)}
    assert not rows["postgresql"]["running"] and not rows["kafka"]["running"]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    shutil.rmtree(root, ignore_errors=True)


def test_db_current_unreachable_is_one_line_error(tmp_path):
    env = dict(os.environ, ARMLAB_DATABASE_URL="postgresql+psycopg://armlab@127.0.0.1:1/none")
    res = _armlab("db", "current", env=env, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot reach the database")
    assert "Traceback" not in res.stderr
