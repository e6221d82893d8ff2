"""The API through a Kafka outage, on a real uvicorn server with real Kafka and PostgreSQL.

With the broker stopped, 60 concurrent ``POST /v1/events`` answer 503 with Retry-After within
the publish bound, and meanwhile every other route stays responsive: liveness, readiness,
the experiment list and results, the dashboard's sign-in page and ``/assign`` each answer
within ~2 s (they used to wait ~29 s behind publishes holding every worker thread)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.api.app import create_app
from armlab.services import registry
from armlab.settings import KafkaSettings, Settings
from tests.builders import experiment_spec

PRODUCER = {"Authorization": "Bearer p-secret"}
ADMIN = {"Authorization": "Bearer a-secret"}
PUBLISH_TIMEOUT_S = 2.0
#: Every other route must answer within this while Kafka is away.
ROUTE_BOUND_S = 2.0
CONCURRENT_EVENTS = 60


def _spec(key: str) -> ExperimentSpec:
    return experiment_spec(key, treatments=("b",))


def _event(i: int) -> dict[str, Any]:
    return {"schema": "impression.v1", "event_id": f"e{i}", "impression_id": f"i{i}",
            "experiment_key": "live", "arm_key": "b", "unit_id": f"u{i}", "propensity": 0.5,
            "served_at": "2026-01-01T00:00:00Z"}


class _Server:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = call()
    return r, time.monotonic() - t0


def _probe(call: Callable[[], httpx.Response], times: int = 3) -> list[float]:
    took = []
    for _ in range(times):
        r, t = _timed(call)
        assert r.status_code == 200, (r.request.url, r.status_code, r.text)
        took.append(t)
        time.sleep(0.2)
    return took


def test_kafka_down_events_503_fast_and_other_routes_stay_responsive(
    pg_url: str, kafka: Any, kafka_topic_factory: Callable[..., str]
) -> None:
    settings = Settings(
        database_url=pg_url, transport="kafka", kafka=KafkaSettings(bootstrap=kafka.bootstrap),
        topic_impressions=kafka_topic_factory(prefix="imp"),
        topic_feedback=kafka_topic_factory(prefix="fb"),
        snapshot_refresh_s=0.2, events_publish_timeout_s=PUBLISH_TIMEOUT_S,
        auth_tokens=SecretStr("app:producer:p-secret,ad:admin:a-secret"),
    )
    services = bootstrap(settings)
    with UnitOfWork(services.session_factory) as uow:
        registry.create_experiment(uow, spec=_spec("live"), actor="t")
        registry.start_experiment(uow, key="live", actor="t")
        uow.commit()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    try:
        with _Server(create_app(settings, services)) as url, \
                httpx.Client(base_url=url, timeout=90, limits=limits) as c:
            # Kafka up: events are accepted (the producer is built, the topics' metadata known)
            r = c.post("/v1/events", json=_event(0), headers=PRODUCER)
            assert r.status_code == 202, r.text
            assert c.post("/v1/experiments/live/assign", json={"unit_id": "u0"},
                          headers=PRODUCER).status_code == 200

            probes: dict[str, Callable[[], httpx.Response]] = {
                "/healthz": lambda: c.get("/healthz"),
                "/readyz": lambda: c.get("/readyz"),
                "list": lambda: c.get("/v1/experiments", headers=ADMIN),
                "results": lambda: c.get("/v1/experiments/live/results", headers=ADMIN),
                "assign": lambda: c.post("/v1/experiments/live/assign",
                                         json={"unit_id": "u1"}, headers=PRODUCER),
                "/ui/login": lambda: c.get("/ui/login"),
            }
            for call in probes.values():  # warm: connections, caches, templates
                assert call().status_code == 200

            kafka.stop()
            try:
                with ThreadPoolExecutor(CONCURRENT_EVENTS + len(probes)) as pool:
                    t_fire = time.monotonic()
                    events = [pool.submit(_timed, lambda i=i: c.post(
                        "/v1/events", json=_event(i), headers=PRODUCER))
                        for i in range(1, CONCURRENT_EVENTS + 1)]
                    time.sleep(0.3)  # the publishes are in flight
                    # each route probed in its own thread, 3 times, while they are
                    rounds = {name: pool.submit(_probe, call) for name, call in probes.items()}
                    latencies = {name: f.result() for name, f in rounds.items()}
                    answers = [f.result() for f in events]
                    all_events_s = time.monotonic() - t_fire
                worst = {name: max(v) for name, v in latencies.items()}
                event_s = [took for _, took in answers]
                print(f"Kafka down: {CONCURRENT_EVENTS} concurrent POST /v1/events all answered "
                      f"in {all_events_s:.2f} s (each: max {max(event_s):.2f} s, "
                      f"median {sorted(event_s)[len(event_s) // 2]:.3f} s); other routes, "
                      "worst of 3: " + ", ".join(f"{k} {v:.3f} s" for k, v in worst.items()))
                assert all(took < ROUTE_BOUND_S for took in worst.values()), worst
                for r, _ in answers:
                    assert r.status_code == 503, r.text
                    assert r.headers["Retry-After"].isdigit(), r.headers
                    assert r.headers["content-type"].startswith("application/"), r.headers
                    assert r.json()["type"] == "ServiceUnavailable", r.text
                assert max(event_s) < PUBLISH_TIMEOUT_S + 1.5, event_s
                # the breaker is open: the next publish does not wait on Kafka again
                r, took = _timed(lambda: c.post("/v1/events", json=_event(61), headers=PRODUCER))
                assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
                assert took < 0.5, took
            finally:
                kafka.start()
            # back to 202 once the broker is back (after the breaker's short pause at most)
            deadline = time.monotonic() + 60
            while (r := c.post("/v1/events", json=_event(999), headers=PRODUCER)).status_code \
                    != 202:
                assert r.status_code == 503, r.text
                assert time.monotonic() < deadline, "events not accepted after the restart"
                time.sleep(0.5)
    finally:
        services.close()
