"""CLI errors: one readable line, exit 1, never a database password."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from armlab.errors import redact


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://armlab:hunter2@127.0.0.1:1/x",  # nothing listens on port 1
    "mysql://user:hunter2@db.example/x",  # not a supported scheme
    "postgresql+nodriver://user:hunter2@db.example/x",  # SQLAlchemy cannot load it
])
def test_database_url_errors_are_one_line_without_the_password(url: str) -> None:
    env = dict(os.environ, ARMLAB_DATABASE_URL=url)
    p = subprocess.run([sys.executable, "-m", "armlab", "allocate", "--once"], env=env,
                       capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "hunter2" not in out
    assert "Traceback" not in out
    assert out.strip().startswith("error: ") and len(out.strip().splitlines()) == 1, out


def test_redact_hides_url_passwords() -> None:
    assert redact("at postgresql+psycopg://u:p%40ss@h:5432/db now") == \
        "at postgresql+psycopg://u:***@h:5432/db now"
    assert redact("'sasl://a:b@c' and http://x@y") == "'sasl://a:***@c' and http://x@y"
    assert redact("no urls here: a:b@c") == "no urls here: a:b@c"
