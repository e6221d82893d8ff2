"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) against a real ``armlab serve`` subprocess on PostgreSQL.

Events reach the database through the real consumer (``IngestRunner`` on the in-process bus,
writing the same tables and rollups as the Kafka consumer) and the allocator runs its real
passes; the browser only sees what the server renders. A missing browser fails the module
naming the Debian package; nothing here downloads one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from armlab.adapters.db.models import AuditLog, Experiment
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import Services, bootstrap
from armlab.client import MemoryEventProducer
from armlab.core.clock import utcnow
from armlab.core.specs import ExperimentSpec
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs"
CHROMIUM = "/usr/bin/chromium"
ADMIN, READER = "admin-secret-1", "reader-secret-1"
XSS_NAME = "<script>window.__xss = 1</script>Evil <b>name</b>"
RATES = {"a": 0.30, "b": 0.05, "c": 0.36}  # a is the control; b is clearly worse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class World:
    """The database the server reads, and the test's own consumer and allocator on it."""

    def __init__(self, url: str) -> None:
        self.services: Services = bootstrap(Settings(database_url=url, transport="memory"))
        self.bus = MemoryBus()
        s = self.services.settings
        self.producer = MemoryEventProducer(self.bus, topic_impressions=s.topic_impressions,
                                            topic_feedback=s.topic_feedback)
        self.runner = bootstrap(s, engine=self.services.engine, bus=self.bus).ingest_runner()
        self.seq = 0

    def register(self, key: str, name: str, *, start: bool, window_s: int = 60) -> None:
        spec = ExperimentSpec.model_validate({
            "key": key, "name": name, "policy": {"name": "thompson"},
            "exploration_floor": 0.05, "attribution_window_s": window_s,
            "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                     for k in RATES],
        })
        with self.services.uow() as uow:
            registry.create_experiment(uow, spec=spec, actor="seed")
            if start:
                registry.start_experiment(uow, key=key, actor="seed", reason="seeded")
            uow.commit()

    def traffic(self, key: str, per_arm: int, served_at: datetime) -> None:
        """``per_arm`` impressions per arm (propensity 1/3), clicks at each arm's rate
        (deterministic: every k-th impression), consumed by the real runner."""
        for arm, rate in RATES.items():
            every = 1.0 / rate
            for i in range(per_arm):
                self.seq += 1
                imp = self.producer.send_impression(
                    experiment_key=key, arm_key=arm, unit_id=f"u{self.seq}", propensity=1 / 3,
                    served_at=served_at)
                if int((i + 1) / every) > int(i / every):
                    self.producer.send_feedback(
                        impression_id=imp.impression_id, experiment_key=key, kind="click",
                        occurred_at=served_at + timedelta(seconds=5))
        self.runner.drain()

    def allocate(self, now: datetime | None = None) -> None:
        run_allocation(self.services.allocation_store, now=now)

    def experiment(self, key: str) -> Experiment:
        with self.services.uow() as uow:
            return registry.get_experiment(uow, key=key)

    def audit(self, key: str) -> list[AuditLog]:
        with self.services.session_factory() as s:
            exp_id = s.scalar(select(Experiment.id).where(Experiment.key == key))
            return list(s.scalars(select(AuditLog).where(AuditLog.experiment_id == exp_id)
                                  .order_by(AuditLog.id)))

    def close(self) -> None:
        self.runner.close()
        self.services.close()


@pytest.fixture(scope="module")
def dash_url(pg_server: Any, _pg_template: str) -> Iterator[str]:
    import psycopg

    if not pg_server.is_running():
        pg_server.start()
    name = f"dash_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template}" OWNER armlab')
    yield pg_server.url_for(name)
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def world(dash_url: str) -> Iterator[World]:
    w = World(dash_url)
    w.register("live-exp", "Live experiment", start=True)
    w.register("stop-exp", "Stop me", start=True)
    w.register("reader-exp", "Reader's view", start=True)
    w.register("xss-exp", XSS_NAME, start=False)
    t0 = utcnow() - timedelta(minutes=30)
    for i in range(5):  # five consumer batches, each followed by an allocator pass
        at = t0 + timedelta(minutes=5 * i)
        w.traffic("live-exp", 300, at)
        w.allocate(at + timedelta(seconds=61))
    yield w
    w.close()


@pytest.fixture(scope="module")
def server(dash_url: str, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "ARMLAB_DATABASE_URL": dash_url, "ARMLAB_TRANSPORT": "memory",
           "ARMLAB_AUTH_TOKENS": f"boss:admin:{ADMIN},rita:reader:{READER}",
           "ARMLAB_UI_SECRET": "test-ui-secret", "ARMLAB_ALLOCATOR_INTERVAL_S": "60"}
    cwd = tmp_path_factory.mktemp("serve")
    log = (cwd / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "armlab", "serve", "--port", str(port),
                             "--log-level", "warning"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"armlab serve did not start:\n{(cwd / 'serve.log').read_text()[-3000:]}")
        time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() or shutil.which("chromium")):
        pytest.fail("chromium is not installed: the browser tests need Debian's package "
                    "(apt-get install chromium; `make setup` installs it)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file()
                              else shutil.which("chromium"),
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _sign_in(browser: Any, base: str, token: str, path: str = "/ui/experiments") -> Any:
    ctx = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = ctx.new_page()
    page.goto(base + path)
    assert "/ui/login" in page.url  # not signed in yet: sent to the sign-in page
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(re.compile(re.escape(base + path.split("?")[0])))
    return page


def _csrf(page: Any) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def test_sign_in_list_filter_search_and_script_name_as_text(browser: Any, server: str) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(server + "/ui/login")
    page.fill("#token", "not-a-token")
    page.click("#login-form button[type=submit]")
    assert "not valid" in page.inner_text("#login-error")
    ctx.close()

    page = _sign_in(browser, server, ADMIN)
    cookie = next(c for c in page.context.cookies() if c["name"] == "armlab_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert ADMIN not in cookie["value"]
    keys = page.locator("#experiments tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.key)")
    assert set(keys) == {"live-exp", "stop-exp", "reader-exp", "xss-exp"}
    live = page.locator('tr[data-key="live-exp"]')
    assert "running" in live.inner_text() and "thompson" in live.inner_text()
    assert "4,500" in live.inner_text()  # traffic: 5 batches x 3 arms x 300
    # The name with <script> is text, not markup, and never ran.
    assert page.locator('tr[data-key="xss-exp"] td.name').inner_text() == XSS_NAME
    assert page.evaluate("window.__xss") is None
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "dashboard-list.png"), full_page=True)

    page.select_option("#status-filter", "draft")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r"status=draft"))
    assert page.locator("#experiments tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.key)") == ["xss-exp"]
    page.goto(server + "/ui/experiments?q=STOP")
    assert page.locator("#experiments tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.key)") == ["stop-exp"]
    page.goto(server + "/ui/experiments/xss-exp")
    assert page.inner_text("#exp-name") == XSS_NAME
    assert page.evaluate("window.__xss") is None
    page.context.close()


def test_experiment_page_charts_and_live_update(browser: Any, server: str, world: World) -> None:
    page = _sign_in(browser, server, READER, "/ui/experiments/live-exp")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 3
    b_row = page.locator('#leaderboard tr[data-arm="b"]').inner_text()
    assert "1,500" in b_row
    for chart in ("weights", "mean", "prob_best", "cs-b", "cs-c"):
        box = page.locator(f'[data-chart="{chart}"]')
        box.locator("canvas").first.wait_for(timeout=10_000)
        assert int(box.get_attribute("data-points") or 0) >= 1, chart
    assert int(page.get_attribute('[data-chart="weights"]', "data-points") or 0) == 5
    # hover shows values: uPlot's live legend fills in the values under the cursor
    over = page.locator('[data-chart="weights"] .u-over').first
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + box["height"] / 2, steps=5)
    legend = page.locator('[data-chart="weights"] .u-legend').inner_text()
    assert re.search(r"0\.\d+", legend), legend
    assert page.locator("#srm").inner_text().startswith("Sample-ratio mismatch")
    assert page.locator('#audit-table tr[data-action="start"]').count() == 1
    assert page.locator("#actions").count() == 0  # a reader
    page.screenshot(path=str(DOCS / "dashboard-experiment.png"), full_page=True)

    # Live: a new consumer batch and an allocator pass show up without a reload.
    before = page.inner_text("#total-impressions")
    t = time.monotonic()
    world.traffic("live-exp", 20, utcnow())
    world.allocate()
    page.wait_for_function(
        "b => document.getElementById('total-impressions').textContent !== b", arg=before,
        timeout=5_000)
    page.wait_for_function(
        "() => document.querySelector('[data-chart=\"weights\"]').dataset.points === '6'",
        timeout=5_000)
    assert time.monotonic() - t < 5.0 + 1.0  # (the ingest and the pass themselves included)
    assert page.inner_text("#total-impressions") == "4,560"
    page.context.close()


def test_stop_with_reason_changes_state_and_writes_the_audit_row(
        browser: Any, server: str, world: World) -> None:
    page = _sign_in(browser, server, ADMIN, "/ui/experiments/stop-exp")
    page.fill("#stop-reason", "enough <b>seen</b>")
    page.click("#stop-button")
    page.wait_for_url(re.compile(r"done=stop"))
    assert page.inner_text("#exp-status") == "stopped"
    row = page.locator('#audit-table tr[data-action="stop"]')
    assert row.locator("td.reason").inner_text() == "enough <b>seen</b>"
    assert world.experiment("stop-exp").status == "stopped"
    last = world.audit("stop-exp")[-1]
    assert (last.action, last.actor, last.reason) == ("stop", "boss", "enough <b>seen</b>")
    assert last.before["status"] == "running" and last.after["status"] == "stopped"
    page.context.close()


def test_ship_refused_by_the_guard_then_forced(browser: Any, server: str, world: World) -> None:
    page = _sign_in(browser, server, ADMIN, "/ui/experiments/live-exp")
    page.select_option("#ship-arm", "b")
    page.fill("#ship-reason", "b looks cheaper")
    page.click("#ship-button")
    assert "against the sequential evidence" in page.inner_text("#action-error")
    assert page.inner_text("#exp-status") == "running"
    assert world.experiment("live-exp").status == "running"
    page.check("#ship-force")
    page.click("#ship-button")
    page.wait_for_url(re.compile(r"done=ship"))
    assert page.inner_text("#exp-status") == "shipped"
    exp = world.experiment("live-exp")
    assert (exp.status, exp.shipped_arm_key) == ("shipped", "b")
    last = world.audit("live-exp")[-1]
    assert last.action == "ship" and last.evidence.get("force") is True
    assert "overridden" in last.evidence
    assert "forced" in page.locator('#audit-table tr[data-action="ship"]').inner_text()
    page.context.close()


def test_reader_sees_no_actions_and_forged_posts_are_refused(
        browser: Any, server: str, world: World) -> None:
    page = _sign_in(browser, server, READER, "/ui/experiments/reader-exp")
    assert page.locator("#actions").count() == 0
    assert page.locator("#nav-new").count() == 0
    csrf = _csrf(page)  # the reader's own, valid token: the role still says no
    r = page.request.post(f"{server}/ui/experiments/reader-exp/stop",
                          form={"reason": "x", "csrf": csrf}, max_redirects=0)
    assert r.status == 403 and "admin" in r.text()
    page.goto(server + "/ui/experiments/new")
    assert "needs role 'admin'" in page.inner_text("#page-error")
    page.context.close()

    admin = _sign_in(browser, server, ADMIN, "/ui/experiments/reader-exp")
    for form in ({"reason": "forged"}, {"reason": "forged", "csrf": "wrong"}):
        r = admin.request.post(f"{server}/ui/experiments/reader-exp/stop", form=form,
                               max_redirects=0)
        assert r.status == 403 and "CSRF" in r.text()
    # Without the session cookie (what SameSite=Strict gives a cross-site form) it is 403 too.
    r = httpx.post(f"{server}/ui/experiments/reader-exp/stop",
                   data={"reason": "forged", "csrf": _csrf(admin)})
    assert r.status_code == 403
    assert world.experiment("reader-exp").status == "running"
    assert [a.action for a in world.audit("reader-exp")] == ["create", "start"]
    admin.context.close()


def test_register_shows_the_api_field_errors_then_registers_and_starts(
        browser: Any, server: str, world: World) -> None:
    page = _sign_in(browser, server, ADMIN, "/ui/experiments/new")
    page.fill("#spec", '{"key": "from-ui", "arms": [{"key": "a", "control": true, '
                       '"variant": {"kind": "popularity"}}], "exploration_floor": 2}')
    page.click("#register-form button[type=submit]")
    errors = page.inner_text("#spec-errors")
    assert "arms" in errors and "exploration_floor" in errors
    assert "from-ui" in page.input_value("#spec")  # the text is kept for fixing
    page.fill("#spec", "key: from-ui\nname: From the UI\narms:\n"
                       "  - {key: a, control: true, variant: {kind: popularity}}\n"
                       "  - {key: b, variant: {kind: popularity}}\n")
    page.click("#register-form button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/experiments/from-ui\?done=create"))
    assert page.inner_text("#exp-status") == "draft"
    page.click("#start-form button[type=submit]")
    page.wait_for_url(re.compile(r"done=start"))
    assert page.inner_text("#exp-status") == "running"
    assert [a.action for a in world.audit("from-ui")] == ["create", "start"]
    assert [a.actor for a in world.audit("from-ui")] == ["boss", "boss"]
    page.context.close()
