"""ServingClient against a real `armlab serve` (a subprocess on SQLite, in-process bus):
answers while it is up, fallbacks within the deadline while it is hung (SIGSTOP) and when it
is terminated, with and without the circuit breaker, and recovery after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from armlab.client import FALLBACK_PREFIX, ServingClient
from tests.builders import spec_body
from tests.integration.entrypoints.test_cli_live import ARMLAB, free_port, wait_until_ready

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer a-secret"}
TIMEOUT_S = 0.5
CANDIDATES = [{"id": f"m{i}", "title": f"Movie {i}", "popularity": i * 10} for i in range(1, 6)]


class Serve:
    """`armlab serve` on a fixed port; start/stop as often as the test needs."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp_path = tmp_path
        self.env = {**os.environ, "ARMLAB_DATABASE_URL": db_url,
                    "ARMLAB_AUTH_TOKENS": "ad:admin:a-secret,app:producer:p-secret",
                    "ARMLAB_AUTH_DISABLED": "false", "ARMLAB_TRANSPORT": "memory",
                    "ARMLAB_HOME": str(tmp_path / "home"), "ARMLAB_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log_path = self.tmp_path / f"serve-{self.runs}.log"
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [ARMLAB, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(self.url, {"serve": self.proc}, {"serve": log_path})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case it was paused
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def serve(sqlite_url: str, tmp_path: Path) -> Iterator[Serve]:
    s = Serve(sqlite_url, tmp_path)
    s.start()
    try:
        r = httpx.post(f"{s.url}/v1/experiments", headers=ADMIN, timeout=30,
                       json=spec_body("home", treatments=("t1",)))
        assert r.status_code == 201, r.text
        r = httpx.post(f"{s.url}/v1/experiments/home/start", headers=ADMIN, timeout=30,
                       json={"reason": "test"})
        assert r.status_code == 200, r.text
        yield s
    finally:
        s.stop()


def _until_served(call: Callable[[], Any], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while (result := call()).fallback:
        assert time.monotonic() < deadline, f"no server answer: {result.reason}"
        time.sleep(0.2)
    return result


def _worst(call: Callable[[], Any], n: int) -> tuple[float, list[Any]]:
    """The slowest of ``n`` calls, and their results (each with ``took_s`` set on it)."""
    took, out = [], []
    for _ in range(n):
        t0 = time.monotonic()
        result = call()
        took.append(time.monotonic() - t0)
        out.append((result, took[-1]))
    return max(took), [_Timed(r, t) for r, t in out]


class _Timed:
    def __init__(self, result: Any, took_s: float) -> None:
        self.result, self.took_s = result, took_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result, name)


def test_answers_then_falls_back_within_the_deadline_then_recovers(serve: Serve) -> None:
    with ServingClient(serve.url, "p-secret", timeout_s=TIMEOUT_S, breaker_failures=3,
                       breaker_cooldown_s=1.0) as client, \
            ServingClient(serve.url, "p-secret", timeout_s=TIMEOUT_S,
                          breaker_failures=10**9) as no_breaker:
        # up: the first answers may wait for the allocator's first snapshot
        a = _until_served(lambda: client.assign("home", "u1", context={"page": "home"}))
        assert a.arm in ("control", "t1") and 0 < a.propensity <= 1
        assert not a.impression_id.startswith(FALLBACK_PREFIX) and a.should_log
        assert a.variant["kind"] == "popularity" and a.experiment_key == "home"
        assert client.control_arm("home") == "control"  # learned from GET /v1/experiments
        r = _until_served(lambda: client.recommend(
            "home", "u1", history=["m1"], candidates=CANDIDATES, k=3))
        assert [i.item_id for i in r.items] == ["m5", "m4", "m3"]  # popularity, m1 excluded
        assert all(i.score > 0 for i in r.items) and r.arm in ("control", "t1")
        assert _until_served(lambda: no_breaker.assign("home", "u2")).should_log

        assert serve.proc is not None
        # hung: the process is paused, connections are accepted but never answered
        os.kill(serve.proc.pid, signal.SIGSTOP)
        try:
            hung_closed, out = _worst(lambda: no_breaker.assign("home", "u3"), 4)
            assert all(o.fallback and o.arm == "control" for o in out)
            hung_open, out = _worst(lambda: client.assign("home", "u3"), 8)
            assert all(o.fallback and o.arm == "control" for o in out)
            opened = [o.took_s for o in out if o.reason == "circuit open"]
            assert len(opened) >= 5, [o.reason for o in out]
            breaker_open_s = max(opened)
            assert breaker_open_s < 0.01, opened  # answered at once, no network
        finally:
            os.kill(serve.proc.pid, signal.SIGCONT)

        # terminated mid-run: connections are refused
        serve.proc.terminate()
        serve.proc.wait(timeout=20)
        time.sleep(1.1)  # past the breaker's cool-down: the next call tries the server
        down_closed, out = _worst(lambda: no_breaker.assign("home", "u4"), 10)
        assert all(o.fallback and not o.should_log for o in out)
        down_open, out = _worst(lambda: client.assign("home", "u4"), 10)
        assert all(o.fallback and o.arm == "control" for o in out)
        assert all(o.impression_id.startswith(FALLBACK_PREFIX) for o in out)
        down_rec, recs = _worst(lambda: client.recommend(
            "home", "u4", history=["m1"], candidates=CANDIDATES, k=3), 5)
        assert all(r.fallback and [i.item_id for i in r.items] == ["m2", "m3", "m4"]
                   for r in recs)
        print(f"\nserver hung (SIGSTOP): worst call {hung_closed:.3f} s without the breaker, "
              f"{hung_open:.3f} s with it (until it opens; {breaker_open_s * 1000:.2f} ms once "
              f"open); terminated: {down_closed:.3f} s without, "
              f"{down_open:.3f} s with; recommend {down_rec:.3f} s (deadline {TIMEOUT_S} s)")
        for took in (hung_closed, hung_open, down_closed, down_open, down_rec):
            assert took < TIMEOUT_S + 0.25, took  # the deadline, plus scheduling on a busy box

        # restarted: the client answers from the server again after the cool-down
        serve.start()
        t0 = time.monotonic()
        back = _until_served(lambda: client.assign("home", "u5"))
        assert back.should_log and not back.impression_id.startswith(FALLBACK_PREFIX)
        assert time.monotonic() - t0 < 10
        assert not _until_served(lambda: client.recommend(
            "home", "u5", history=["m1"], candidates=CANDIDATES, k=3)).fallback


class _Recorder(httpx.HTTPTransport):
    """A real transport that keeps every (request, response body) pair."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[httpx.Request, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        resp.read()
        self.seen.append((request, resp.json() if resp.status_code == 200 else None))
        return resp


#: What ServingClient reads from each 200 answer (armlab/client/serving.py).
READS = {
    "assign": {"impression_id", "experiment_key", "arm", "variant", "propensity", "served_at",
               "snapshot_id"},
    "recommend": {"impression_id", "experiment_key", "arm", "propensity", "served_at", "items"},
    "experiment": {"control_arm_key", "arms"},
}


def _schema(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "components": doc["components"]}


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_requests_and_answers_match_the_servers_openapi_document(serve: Serve) -> None:
    import jsonschema_rs

    doc = httpx.get(f"{serve.url}/openapi.json", timeout=10).json()
    paths = {"assign": "/v1/experiments/{key}/assign",
             "recommend": "/v1/experiments/{key}/recommend",
             "experiment": "/v1/experiments/{key}"}
    recorder = _Recorder()
    with ServingClient(serve.url, "p-secret", timeout_s=5, transport=recorder) as client:
        _until_served(lambda: client.assign("home", "u1", context={"page": "home", "n": 1}))
        client.assign("home", "u2")
        _until_served(lambda: client.recommend(
            "home", "u1", user_text="likes films", history=["m1"], candidates=CANDIDATES,
            k=2, exclude=["m2"], context={"page": "home"}))
        # and the body for a server-side catalogue validates too (the server may answer 404)
        client.recommend("home", "u1", history=["m1"], catalog="movies", exclude_history=False)
    checked: dict[str, int] = {"assign": 0, "recommend": 0, "experiment": 0}
    for request, answer in recorder.seen:
        last = request.url.path.rsplit("/", 1)[1]
        op = last if last in ("assign", "recommend") else "experiment"
        operation = doc["paths"][paths[op]]["post" if request.method == "POST" else "get"]
        if request.method == "POST":
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            errors = [e.message for e in jsonschema_rs.validator_for(
                _schema(doc, schema)).iter_errors(httpx.Response(200, content=request.content)
                                                  .json())]
            assert not errors, (op, request.content, errors)
        if answer is None:
            continue
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        errors = [e.message for e in
                  jsonschema_rs.validator_for(_schema(doc, schema)).iter_errors(answer)]
        assert not errors, (op, answer, errors)
        props = _resolve(doc, schema)["properties"]
        assert READS[op] <= set(props), (op, READS[op] - set(props))
        checked[op] += 1
    assert all(n >= 1 for n in checked.values()), checked
    items = _resolve(doc, doc["paths"][paths["recommend"]]["post"]["responses"]["200"]
                     ["content"]["application/json"]["schema"])["properties"]["items"]["items"]
    assert {"item_id", "score"} <= set(_resolve(doc, items)["properties"])
    arms = _resolve(doc, doc["paths"][paths["experiment"]]["get"]["responses"]["200"]
                    ["content"]["application/json"]["schema"])["properties"]["arms"]["items"]
    assert {"key", "variant"} <= set(_resolve(doc, arms)["properties"])
