"""The admin CLI as a user runs it: `armlab serve` in a subprocess on PostgreSQL, then the
`armlab` executable with ARMLAB_API_URL / ARMLAB_TOKEN against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ARMLAB = str(Path(sys.executable).with_name("armlab"))
SPEC_YAML = """\
key: home-recs
name: Home page recommendations
unit: request
reward: {kind: binary, metric: click}
policy: {name: thompson, params: {}}
exploration_floor: 0.02
burn_in: 100
attribution_window_s: 3600
sequential: {alpha: 0.05, auto_stop: false}
arms:
  - {key: control, control: true, variant: {kind: popularity}}
  - {key: minilm, variant: {kind: bi_encoder, model: all-MiniLM-L6-v2}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, procs: dict[str, subprocess.Popen[bytes]],
                     logs: dict[str, Path], timeout_s: float = 90) -> None:
    """Wait for ``url``'s /readyz; fail with the log tail if a process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name, p in procs.items():
            if p.poll() is not None:
                pytest.fail(f"armlab {name} exited {p.returncode}: "
                            f"{logs[name].read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"armlab serve not ready in {timeout_s:.0f} s: "
                        f"{logs['serve'].read_text()[-2000:]}")
        time.sleep(0.3)


@pytest.fixture()
def api(pg_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`armlab serve` on a free loopback port; yields the environment the CLI needs."""
    port = free_port()
    env = {
        **os.environ,
        "ARMLAB_DATABASE_URL": pg_url,
        "ARMLAB_AUTH_TOKENS": "ops:admin:admin-secret,ro:reader:reader-secret",
        "ARMLAB_AUTH_DISABLED": "false",
        "ARMLAB_TRANSPORT": "memory",
        "ARMLAB_HOME": str(tmp_path / "home"),
        "ARMLAB_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([ARMLAB, "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, {"serve": proc}, {"serve": tmp_path / "serve.log"})
        yield {**env, "ARMLAB_API_URL": url, "ARMLAB_TOKEN": "admin-secret"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def armlab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ARMLAB, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_register_start_ship_show_against_a_running_api(
    api: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    r = armlab(api, "experiments", "create", "-f", str(spec))
    assert r.returncode == 0, r.stderr
    assert "home-recs: registered (draft)" in r.stdout

    r = armlab(api, "start", "home-recs", "--reason", "launch")
    assert r.returncode == 0, r.stderr
    assert "status running" in r.stdout

    r = armlab(api, "ship", "home-recs", "--arm", "minilm", "--reason", "clear win", "--json")
    assert r.returncode == 0, r.stderr
    shipped = json.loads(r.stdout)
    assert shipped["status"] == "shipped" and shipped["shipped_arm"] == "minilm"

    r = armlab(api, "experiments", "show", "home-recs")
    assert r.returncode == 0, r.stderr
    for text in ("experiment home-recs", "shipped", "minilm", "bi_encoder", "results"):
        assert text in r.stdout, r.stdout

    # An illegal transition: exactly one readable line on stderr, non-zero exit.
    r = armlab(api, "start", "home-recs")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "error: HTTP 409 Illegal state transition: cannot start experiment 'home-recs': "
        "it is shipped; start needs status draft"
    ], r.stderr
    assert r.stdout == ""

    # (auth failures, 422s and the other errors are covered in
    # tests/unit/entrypoints/cli/test_admin_cli.py; every `armlab` process costs seconds of
    # start-up, so this test keeps to the path a user walks.)


def test_cli_reports_an_unreachable_api_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {**os.environ, "ARMLAB_API_URL": f"http://127.0.0.1:{port}", "ARMLAB_TOKEN": "x"}
    r = armlab(env, "experiments", "list")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: cannot reach the armlab API at http://127.0.0.1:{port}")
