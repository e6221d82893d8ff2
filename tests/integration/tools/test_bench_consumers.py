"""``armlab bench consumers`` reduced: 1, 2 and 4 `armlab consume` processes on a 4-partition
topic of 1,200 events against the session's PostgreSQL and Kafka. The JSON has every figure,
each run's accounting is exact (statistics equal to the reference, every record counted once,
offsets at the end, no dead letter) and the baselines read the same topic."""

from __future__ import annotations

import pytest

from armlab.settings import KafkaSettings, Settings
from armlab.tools.bench.consumers import run_bench

pytestmark = pytest.mark.integration


def test_bench_consumers_small_run(pg_url: str, kafka_bootstrap: str) -> None:
    settings = Settings(database_url=pg_url, kafka=KafkaSettings(bootstrap=kafka_bootstrap))
    out = run_bench(settings, events=1_200, partitions=4, processes=(1, 2, 4), codec="zstd",
                    timeout_s=240.0)
    assert out["accounting_exact"] is True, out["runs"]
    assert [r["processes"] for r in out["runs"]] == [1, 2, 4]
    for r in out["runs"]:
        assert r["records"] == r["records_counted"] == r["offsets_committed"] == 1_200
        assert r["stats_equal_reference"] and r["dead_letters"] == 0
        assert len(r["per_process_records"]) == r["processes"]
        assert sum(r["per_process_records"]) == 1_200
        assert r["processes"] == 1 or sum(n > 0 for n in r["per_process_records"]) > 1
        assert r["events_per_s"] > 0 and r["ingest_s"] > 0
    assert set(out["armlab_events_per_s"]) == set(out["ratio"]) == {"1", "2", "4"}
    assert out["scaling"]["1"] == 1.0
    for key in ("baseline_events_per_s", "baseline_guarded_events_per_s",
                "baseline_confluent_events_per_s"):
        assert out[key] > 0, key
    one, base = out["armlab_events_per_s"]["1"], out["baseline_events_per_s"]
    assert abs(out["ratio"]["1"] - one / base) < 0.01
    assert out["codec"] == "zstd" and out["partitions"] == 4
