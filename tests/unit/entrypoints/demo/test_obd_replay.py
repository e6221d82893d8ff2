"""Open Bandit Dataset: loader, BTS policy estimate, and the replay on SQLite + memory bus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from armlab.adapters.data import obd
from armlab.core.stats import ope
from armlab.errors import ConfigurationError, ValidationFailed


def test_locate_obd_finds_shared_sample() -> None:
    base = obd.locate_obd()
    assert (base / "random" / "all" / "all.csv").is_file()


def test_locate_obd_names_the_setting_when_configured_path_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ARMLAB_OBD_DIR"):
        obd.locate_obd(tmp_path / "nowhere")


def test_load_log_reads_the_sample() -> None:
    log = obd.load_log("random", "men")
    assert log.n == 10_000 and log.n_items == 34
    assert set(np.unique(log.position)) == {1, 2, 3}
    assert np.allclose(log.propensity, 1 / 34)  # uniform random over 34 items
    assert log.clicks == 46
    assert all(a <= b for a, b in zip(log.timestamp, log.timestamp[1:], strict=False))


@pytest.mark.parametrize(("kw", "match"), [({"policy": "greedy"}, "policy must be one of"),
                                           ({"campaign": "kids"}, "campaign must be one of")])
def test_load_log_rejects_unknown_names(kw: dict, match: str) -> None:
    args = {"policy": "random", "campaign": "all"} | kw
    with pytest.raises(ValidationFailed, match=match):
        obd.load_log(**args)


def test_policy_estimate_propensity_recovers_stable_policy() -> None:
    # A stable policy: item a at position 1 with prob 0.6, b with 0.4; counts deviate from
    # 0.6/0.4 (7 vs 3) but the logged propensities are exact, so the harmonic mean is too.
    arms = ["a"] * 7 + ["b"] * 3
    pos = ["1"] * 10
    props = [0.6] * 7 + [0.4] * 3
    est = obd.estimate_policy_from(arms, pos, props, "propensity")
    assert est["1"]["a"] == pytest.approx(0.6) and est["1"]["b"] == pytest.approx(0.4)
    emp = obd.estimate_policy_from(arms, pos, props, "empirical")
    assert emp["1"]["a"] == pytest.approx(0.7)


def test_policy_estimate_of_real_bts_log_is_a_distribution_per_position() -> None:
    est = obd.estimate_policy(obd.load_log("bts", "women"))
    assert set(est) == {"1", "2", "3"}
    for dist in est.values():
        assert sum(dist.values()) == pytest.approx(1.0)
        assert all(v > 0 for v in dist.values())


def test_replay_streams_through_consumers_and_matches_direct_ope(sqlite_url: str) -> None:
    from armlab.adapters.db.models import AuditLog
    from armlab.bootstrap import open_services
    from armlab.entrypoints.demo.obd_replay import replay_obd
    from armlab.settings import Settings

    settings = Settings(database_url=sqlite_url, transport="memory", auth_disabled=True)
    limit = 1500
    res = replay_obd(campaign="men", limit=limit, progress=False, settings=settings)
    rnd = obd.load_log("random", "men", limit=limit)
    bts = obd.load_log("bts", "men", limit=limit)
    # every row and click went through the producer SDK and the consumer into the database
    assert res["ingested"]["random"] == {"impressions": limit, "clicks": rnd.clicks}
    assert res["ingested"]["bts"] == {"impressions": limit, "clicks": bts.clicks}
    assert res["ingest_outcomes"]["impression"] == 2 * limit
    # the estimate from the database equals the one computed straight from the CSV files
    target = obd.estimate_policy(bts)
    direct = ope.evaluate_policy(
        [obd.arm_key(a) for a in rnd.item_id], rnd.click, rnd.propensity, {},
        strata=[str(k) for k in rnd.position], target_by_stratum=target,
    )
    for name in ("ipw", "snipw"):
        got = res["ope_from_random_log"][name]
        assert got["value"] == pytest.approx(direct[name].value)
        assert got["ci_low"] == pytest.approx(direct[name].ci_low)
        assert got["n_weighted"] == direct[name].n_weighted
    assert res["bts_logged_ctr"]["value"] == pytest.approx(bts.ctr)
    assert "small" in res["caveat"]
    # both experiments were stopped with the evaluation as evidence
    services = open_services(settings, upgrade=False)
    with services.session_factory() as s:
        stops = s.query(AuditLog).filter(AuditLog.action == "stop").all()
    services.close()
    assert len(stops) == 2
    assert "ope_bts_from_random" in stops[0].evidence


def test_replay_cli_rejects_bad_campaign() -> None:
    from armlab.entrypoints.cli.main import _register_all, app

    _register_all()
    out = CliRunner().invoke(app, ["replay", "obd", "--campaign", "kids", "--json"])
    assert out.exit_code != 0
