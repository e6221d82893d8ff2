"""The contextual block end to end on SQLite: a segment_thompson experiment registered through
the API, impressions with contexts, the real allocator's snapshot (run_allocation), then the
results (per-segment weights from that snapshot, the per-segment effects, the personalisation
value), the HTML report and the dashboard page all show it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.core.clock import utcnow
from armlab.entrypoints.api.app import create_app
from armlab.services.allocator import run_allocation
from armlab.settings import Settings
from tests.contextual_data import add_impressions, contextual_body, matured, segment_rows
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, TOKENS
from tests.unit.entrypoints.api.test_ui import sign_in


def test_results_report_and_dashboard_show_the_contextual_block(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, auth_tokens=TOKENS, transport="memory",
                        ui_secret="unit-test-secret")
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/experiments", json=contextual_body(min_segment_n=200),
                      headers=ADMIN).status_code == 201
        assert c.post("/v1/experiments/ctx/start", headers=ADMIN).status_code == 200
        engine = make_engine(sqlite_url)
        sf = make_session_factory(engine)
        # 600 per (device, arm) at propensity 0.5 (the control's 10% on mobile must reach
        # min_events 30): t1 wins on mobile (0.35 vs 0.10), the
        # control on desktop
        # (the results read up to the real clock: served two hours before it)
        now = utcnow()
        add_impressions(sf, 1, segment_rows(600, np.random.default_rng(9)),
                        served_at=matured(now))
        run_allocation(SqlAllocationStore(sf), now=now)
        engine.dispose()
        r = c.get("/v1/experiments/ctx/results", headers=ADMIN)
        assert r.status_code == 200, r.text
        block = r.json()["contextual"]
        seg = {s["label"]: s for s in block["segments"]}
        assert set(seg) == {"device=mobile", "device=desktop"}
        assert seg["device=mobile"]["weights"]["t1"] > 0.8  # the allocator's learned row
        assert seg["device=desktop"]["weights"]["control"] > 0.8
        eff = {r["segment"]["device"]: r for r in block["effects"]["rows"]}
        assert eff["mobile"]["significant"] and eff["mobile"]["estimate"] > 0.15
        assert eff["desktop"]["significant"] and eff["desktop"]["estimate"] < -0.15
        pers = block["personalisation"]
        # greedy: t1 on mobile, control on desktop, 0.35 against 0.225 for either arm alone
        assert pers["available"] and 0.07 < pers["gain"] < 0.18 and pers["cs_low"] > 0
        report = c.get("/v1/experiments/ctx/report", headers=ADMIN)
        assert report.status_code == 200 and "serving by segment gains" in report.text
        assert 'id="chart-segments"' in report.text
        sign_in(c, "admin-secret")
        page = c.get("/ui/experiments/ctx")
        assert page.status_code == 200 and 'id="contextual"' in page.text
        assert 'data-segment="device=mobile"' in page.text
        # shipped: the newest snapshot is the terminal one, yet the results still judge the
        # policy the experiment learned (its own last snapshot)
        shipped = c.post("/v1/experiments/ctx/ship", headers=ADMIN,
                         json={"arm": "t1", "reason": "t", "force": True})
        assert shipped.status_code == 200, shipped.text
        after = c.get("/v1/experiments/ctx/results", headers=ADMIN).json()
        assert after["snapshot"]["policy_name"] == "shipped"
        assert after["contextual"]["personalisation"]["available"]
        assert after["contextual"]["personalisation"]["gain"] == pytest.approx(pers["gain"])
