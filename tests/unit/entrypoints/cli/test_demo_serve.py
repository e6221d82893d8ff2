"""``armlab demo --serve``: after the run the API stays up on the demo's database and prints
the dashboard URL, where the demo's experiment can be browsed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(300)
def test_demo_serve_prints_the_dashboard_url_and_serves_it(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "ARMLAB_HOME": str(tmp_path / "home"),
           "ARMLAB_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    env.pop("ARMLAB_AUTH_TOKENS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "armlab", "demo", "--tiny", "--max-requests", "30",
         "--cadence", "10", "--key", "served-demo",
         "--report-dir", str(tmp_path / "reports"), "--serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        url = None
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"dashboard: (http://\S+)", line)
            url = m.group(1) if m else None
        assert url == f"http://127.0.0.1:{port}/ui/experiments/served-demo", "".join(lines)[-3000:]
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        for _ in range(100):  # uvicorn binds right after printing the URL
            try:
                login = client.get("/ui/login")
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert "Authentication is disabled" in login.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
        client.post("/ui/login", data={"token": "", "csrf": csrf})
        page = client.get(url)
        assert page.status_code == 200
        assert "served-demo" in page.text and 'id="leaderboard"' in page.text
        charts = client.get(url + "/charts.json").json()
        assert charts["snapshots"] >= 3 and charts["weights"]["x"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
