"""The HTML report: four sections with real content, well-formed SVG, served by the API."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import sessionmaker

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import AllocationSnapshot, Decision, Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.clock import as_utc
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints import report
from armlab.services import registry
from armlab.services import report as report_service
from armlab.services.report import collect, collect_by_key

KEY = "report-test"


def _seed(sf: sessionmaker) -> None:
    spec = ExperimentSpec.model_validate({
        "key": KEY, "name": "Report test", "description": "synthetic data",
        "exploration_floor": 0.05,
        "sequential": {"alpha": 0.05, "auto_stop": True},
        "arms": [
            {"key": "control", "control": True, "variant": {"kind": "popularity"}},
            {"key": "minilm", "variant": {"kind": "bi_encoder"}},
            {"key": "genres", "variant": {"kind": "bi_encoder", "item_template": "{text}"}},
        ],
    })
    with UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec, actor="test")
        uow.commit()
    with UnitOfWork(sf) as uow:
        registry.start_experiment(uow, key=KEY, actor="test")
        uow.commit()
    rng = np.random.default_rng(1)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key=KEY)
        means = {"control": 0.1, "minilm": 0.3, "genres": 0.2}
        for s in range(10):
            w = {"control": 0.34 - s * 0.02, "minilm": 0.33 + s * 0.03, "genres": 0.33 - s * 0.01}
            uow.session.add(AllocationSnapshot(experiment_id=exp.id, policy_name="thompson",
                                               weights=w, created_at=t0 + timedelta(minutes=s)))
        for i in range(600):
            arm = ["control", "minilm", "genres"][i % 3]
            uow.session.add(Impression(
                impression_id=f"imp-{i}", event_id=f"ev-{i}", experiment_id=exp.id,
                arm_key=arm, unit_id=f"u{i}", propensity=1 / 3,
                served_at=t0 + timedelta(seconds=i), reward=float(rng.random() < means[arm]),
            ))
        for j in range(1, 10):
            for arm, d in (("minilm", 0.2), ("genres", 0.1)):
                half = 0.6 / j ** 0.5
                uow.session.add(Decision(
                    experiment_id=exp.id, at=t0 + timedelta(minutes=j), arm_key=arm,
                    decision="treatment_better" if (arm == "minilm" and j == 8) else "continue",
                    estimate=d, p_value=0.5 / j, ci_low=d - half, ci_high=d + half,
                    n_control=20.0 * j, n_treatment=20.0 * j,
                ))
        uow.commit()
    with UnitOfWork(sf) as uow:
        registry.stop_experiment(uow, key=KEY, actor="allocator", reason="mSPRT decided",
                                evidence={"p_value": 0.01, "arm": "minilm"})
        uow.commit()
    with UnitOfWork(sf) as uow:
        registry.ship_experiment(uow, key=KEY, arm="minilm", actor="demo", reason="winner")
        uow.commit()


@pytest.fixture()
def seeded(sqlite_url: str) -> sessionmaker:
    engine = make_engine(sqlite_url)
    sf = make_session_factory(engine)
    _seed(sf)
    yield sf
    engine.dispose()


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, int] = {}
        self.svg_in: dict[str, int] = {}
        self._stack: list[str] = []
        self.rows_in_audit = 0
        self.scripts = 0
        self.external = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids[a["id"]] = self.ids.get(a["id"], 0) + 1
            self._stack.append(a["id"])
        if tag == "svg" and self._stack:
            self.svg_in[self._stack[-1]] = self.svg_in.get(self._stack[-1], 0) + 1
        if tag == "tr" and "audit" in self._stack:
            self.rows_in_audit += 1
        if tag == "script":
            self.scripts += 1
        if tag in ("img", "link", "script") and any(
            (v or "").startswith(("http:", "https:", "//"))
            for k, v in attrs if k in ("src", "href")
        ):
            self.external += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("figure", "section") and self._stack:
            self._stack.pop()


def test_report_has_four_charts_and_audit(seeded: sessionmaker, tmp_path: Path) -> None:
    with UnitOfWork(seeded) as uow:
        path = report.write_report(collect_by_key(uow, KEY), tmp_path)
    page = path.read_text()
    p = _Sections()
    p.feed(page)
    for chart in ("chart-weights", "chart-reward", "chart-cs"):
        assert p.svg_in.get(chart) == 1, chart
    assert p.ids.get("audit") == 1
    # create, start, stop, ship, plus the header row
    assert p.rows_in_audit == 5
    assert p.scripts == 0 and p.external == 0  # self-contained
    for action in ("create", "start", "stop", "ship"):
        assert f"<b>{action}</b>" in page
    assert "mSPRT decided" in page
    assert "stop: treatment_better" in page  # the stopping point is annotated
    assert "★ shipped" in page
    # every inline SVG is well-formed XML and contains drawn paths
    svgs = page.split("<svg")[1:]
    assert len(svgs) == 3
    for chunk in svgs:
        doc = "<svg" + chunk[: chunk.index("</svg>") + len("</svg>")]
        root = ET.fromstring(doc)
        assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 10


def test_report_data_matches_database(seeded: sessionmaker) -> None:
    with UnitOfWork(seeded) as uow:
        exp = registry.get_experiment(uow, key=KEY)
        data = collect(uow, exp)
    assert len(data.snapshots) == 12  # 10 allocator passes + the stop and the ship snapshots
    assert [w for _, w in data.snapshots[-2:]] == [
        {"control": 1.0, "minilm": 0.0, "genres": 0.0},
        {"control": 0.0, "minilm": 1.0, "genres": 0.0}]
    assert len(data.impressions) == 600
    assert len(data.decisions) == 18
    stop = report.stopping_point(data)
    assert stop is not None and stop["arm"] == "minilm" and stop["decision"] == "treatment_better"
    assert [a["action"] for a in data.audit] == ["create", "start", "stop", "ship"]


def test_empty_experiment_still_renders(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    sf = make_session_factory(engine)
    spec = ExperimentSpec.model_validate({
        "key": "empty", "arms": [
            {"key": "a", "control": True, "variant": {"kind": "popularity"}},
            {"key": "b", "variant": {"kind": "popularity"}}]})
    with UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        uow.commit()
    with UnitOfWork(sf) as uow:
        page = report.build_report(collect_by_key(uow, "empty"))
    assert "no allocation snapshots yet" in page
    assert "no impressions yet" in page
    assert "has not decided yet" in page
    engine.dispose()


def test_report_endpoint_serves_html(seeded: sessionmaker, sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from armlab.entrypoints.api.app import create_app
    from armlab.settings import Settings

    settings = Settings(database_url=sqlite_url, auth_tokens="r:reader:rsecret,p:producer:psecret",
                        transport="memory")
    with TestClient(create_app(settings)) as client:
        ok = client.get(f"/v1/experiments/{KEY}/report",
                        headers={"Authorization": "Bearer rsecret"})
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("text/html")
        assert 'id="chart-cs"' in ok.text
        assert client.get(f"/v1/experiments/{KEY}/report").status_code == 401
        missing = client.get("/v1/experiments/nope/report",
                             headers={"Authorization": "Bearer rsecret"})
        assert missing.status_code == 404
        assert missing.json()["title"]


def test_report_endpoint_sends_the_dashboards_security_headers(seeded: sessionmaker,
                                                                sqlite_url: str) -> None:
    """The report is an HTML page of the API: it gets the dashboard's CSP (no inline script),
    X-Frame-Options, nosniff and Referrer-Policy, exactly as a /ui page does."""
    from fastapi.testclient import TestClient

    from armlab.entrypoints.api.app import create_app
    from armlab.settings import Settings

    settings = Settings(database_url=sqlite_url, auth_tokens="r:reader:rsecret",
                        transport="memory")
    names = ("content-security-policy", "x-frame-options", "x-content-type-options",
             "referrer-policy")
    with TestClient(create_app(settings)) as client:
        dashboard = client.get("/ui/login")
        report_page = client.get(f"/v1/experiments/{KEY}/report",
                                 headers={"Authorization": "Bearer rsecret"})
        assert report_page.status_code == 200
        for name in names:
            assert report_page.headers.get(name) == dashboard.headers[name], name
        assert "script-src 'self'" in report_page.headers["content-security-policy"]
        assert report_page.headers["x-frame-options"] == "DENY"
        assert report_page.headers["x-content-type-options"] == "nosniff"
        # the JSON API is left as it was
        assert "content-security-policy" not in client.get("/healthz").headers


def test_report_renders_in_headless_chromium(seeded: sessionmaker, tmp_path: Path) -> None:
    """A real browser rasterises the page; the screenshot is large and not blank. Chromium is
    installed by `make setup`; a missing one fails here (it is never skipped)."""
    assert shutil.which("chromium"), "chromium is not installed (apt-get install chromium)"
    with UnitOfWork(seeded) as uow:
        path = report.write_report(collect_by_key(uow, KEY), tmp_path)
    png = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
         "--window-size=1200,2400", path.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000  # a blank page compresses to a few kB


def _bulk_impressions(sf: sessionmaker, key: str, n: int, t0: datetime) -> None:
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key=key)
        uow.session.execute(insert(Impression), [
            {"impression_id": f"bulk-{i}", "event_id": f"bulk-e{i}", "experiment_id": exp.id,
             "arm_key": ("control", "minilm", "genres")[i % 3], "unit_id": f"b{i}",
             "propensity": 1 / 3, "served_at": t0 + timedelta(seconds=i * 0.7),
             "reward": float(i % 5 == 0)} for i in range(n)])
        uow.commit()


def test_report_aggregates_impressions_in_sql(
        seeded: sessionmaker, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many impressions there are, the report reads at most about
    MAX_REWARD_BUCKETS buckets per arm, and each bucket's running totals are exact."""
    t0 = datetime(2024, 1, 2, tzinfo=UTC)
    _bulk_impressions(seeded, KEY, 3000, t0)
    monkeypatch.setattr(report_service, "MAX_REWARD_BUCKETS", 50)
    with UnitOfWork(seeded) as uow:
        data = collect_by_key(uow, KEY)
        served = uow.session.execute(
            select(Impression.served_at, Impression.arm_key, Impression.reward)).all()
    assert len(data.impressions) <= 3 * 51
    assert sum(n for _, _, n, _ in data.impressions) == 3600
    assert data.first_impression_at == datetime(2024, 1, 1, tzinfo=UTC)
    totals: dict[str, list[float]] = {}
    for at, arm, n, r in data.impressions:
        acc = totals.setdefault(arm, [0, 0.0])
        acc[0] += n
        acc[1] += r
        upto = [rw for t, a, rw in served if a == arm and as_utc(t) <= at]
        assert acc == [len(upto), pytest.approx(sum(upto))], (at, arm)
    page = report.build_report(data)
    assert "(3,600 impressions)" in page
