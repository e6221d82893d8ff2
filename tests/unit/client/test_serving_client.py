"""ServingClient without a server: retries, Retry-After, 4xx, deadline, fallback, breaker
(httpx.MockTransport answers as the API would)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from armlab.client import FALLBACK_PREFIX, CircuitBreaker, ServingClient

OK = {"impression_id": "imp-1", "experiment_key": "exp", "arm": "t1",
      "variant": {"kind": "popularity"}, "propensity": 0.4,
      "served_at": "2026-01-01T00:00:00Z", "snapshot_id": 3}
EXPERIMENT = {"key": "exp", "control_arm_key": "ctl",
              "arms": [{"key": "ctl", "control": True, "position": 0,
                        "variant": {"kind": "popularity", "n": 1}},
                       {"key": "t1", "control": False, "position": 1, "variant": {}}]}


class Script:
    """Answers POSTs from a list of responses (or exceptions) in order; GET the experiment."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=EXPERIMENT)
        self.posts.append((time.monotonic(), request))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _client(script: Script, **kw: Any) -> ServingClient:
    return ServingClient("http://armlab", "tok", transport=httpx.MockTransport(script), **kw)


def test_503_with_retry_after_then_200_is_retried_after_the_wait() -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "0.2"}, json={}),
                    httpx.Response(200, json=OK))
    with _client(script, timeout_s=1.0) as c:
        a = c.assign("exp", "u1", context={"page": "home"})
    assert not a.fallback and a.should_log
    assert (a.impression_id, a.arm, a.propensity, a.snapshot_id) == ("imp-1", "t1", 0.4, 3)
    assert a.variant == {"kind": "popularity"} and a.served_at.year == 2026
    assert len(script.posts) == 2
    assert script.posts[1][0] - script.posts[0][0] >= 0.2  # Retry-After honoured
    req = script.posts[0][1]
    assert req.headers["Authorization"] == "Bearer tok"
    assert req.url.path == "/v1/experiments/exp/assign"


def test_retry_after_past_the_deadline_falls_back_without_waiting() -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "5"}, json={}),
                    httpx.Response(200, json=OK))
    with _client(script, timeout_s=0.5) as c:
        t0 = time.monotonic()
        a = c.assign("exp", "u1")
        took = time.monotonic() - t0
    assert a.fallback and len(script.posts) == 1 and took < 0.2
    assert "deadline" in a.reason


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429])
def test_4xx_is_never_retried(status: int) -> None:
    script = Script(httpx.Response(status, json={"detail": "no"}), httpx.Response(200, json=OK))
    with _client(script) as c:
        a = c.assign("exp", "u1")
    assert a.fallback and a.reason.startswith(f"HTTP {status}")
    assert len(script.posts) == 1
    assert not c.breaker.is_open


def test_connect_errors_are_retried_with_backoff_then_answer() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"),
                    httpx.Response(200, json=OK))
    with _client(script, backoff_s=0.01) as c:
        a = c.assign("exp", "u1")
    assert not a.fallback and len(script.posts) == 3


def test_read_timeout_is_not_retried() -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200, json=OK))
    with _client(script) as c:
        a = c.assign("exp", "u1")
    assert a.fallback and len(script.posts) == 1 and a.reason == "ReadTimeout"


def test_fallback_is_the_learned_control_with_a_local_impression_id() -> None:
    script = Script(httpx.Response(200, json=OK), httpx.ConnectError("refused"))
    with _client(script, backoff_s=0.001) as c:
        assert c.control_arm("exp") is None
        assert not c.assign("exp", "u1").fallback
        assert c.control_arm("exp") == "ctl"  # learned once from GET /v1/experiments/exp
        a = c.assign("exp", "u2")
        b = c.assign("exp", "u3", fallback_arm="t1")
    assert a.fallback and not a.should_log
    assert a.arm == "ctl" and a.variant == {"kind": "popularity", "n": 1}
    assert a.propensity == 1.0 and a.impression_id.startswith(FALLBACK_PREFIX)
    assert a.impression_id != b.impression_id
    assert b.arm == "t1" and b.variant == {}  # per-call override


def test_fallback_arm_configured_or_default_before_any_success() -> None:
    script = Script(httpx.ConnectError("refused"))
    with _client(script, fallback_arms={"exp": "base"}, backoff_s=0.001) as c:
        assert c.assign("exp", "u").arm == "base"
        assert c.assign("other", "u").arm == "control"


def test_recommend_answer_and_fallback_items() -> None:
    out = {k: v for k, v in OK.items() if k not in ("variant", "snapshot_id")}
    out["items"] = [{"item_id": "m2", "score": 2.5}, {"item_id": "m1", "score": 1.0}]
    script = Script(httpx.Response(200, json=out), httpx.Response(503, json={}))
    cands = [{"id": f"m{i}", "title": f"M{i}"} for i in range(1, 6)]
    with _client(script, backoff_s=0.001) as c:
        r = c.recommend("exp", "u1", history=["m3"], candidates=cands, k=2)
        assert not r.fallback and r.items == [("m2", 2.5), ("m1", 1.0)]
        assert r.items[0].item_id == "m2"
        f = c.recommend("exp", "u1", history=["m1"], exclude=["m3"], candidates=cands, k=2)
        g = c.recommend("exp", "u1", user_text="hi", catalog="movies", k=2)
    body = script.posts[0][1].content
    assert b'"candidates"' in body and b'"catalog"' not in body
    assert f.fallback and f.arm == "ctl" and f.items == [("m2", 0.0), ("m4", 0.0)]
    assert g.fallback and g.items == []


def test_breaker_opens_after_consecutive_failures_and_answers_at_once() -> None:
    script = Script(httpx.Response(503, json={}))
    with _client(script, max_attempts=1, breaker_failures=3, breaker_cooldown_s=60) as c:
        for _ in range(3):
            assert c.assign("exp", "u").fallback
        assert c.breaker.is_open and len(script.posts) == 3
        a = c.assign("exp", "u")
    assert a.fallback and a.reason == "circuit open" and len(script.posts) == 3


def test_breaker_half_open_trial_closes_or_reopens() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=2, cooldown_s=5, clock=lambda: now[0])
    b.failure()
    assert b.allow()
    b.failure()
    assert not b.allow()
    now[0] = 5.1
    assert b.allow() and not b.allow()  # one trial; the others keep falling back
    b.failure()  # the trial failed: open again at once
    assert not b.allow()
    now[0] = 10.2
    assert b.allow()
    b.success()
    assert b.allow() and b.allow() and not b.is_open


@pytest.mark.parametrize("answer", [
    httpx.Response(200, json={**OK, "propensity": "lots"}),
    httpx.Response(200, json={"impression_id": "x"}),
    httpx.Response(200, content=b"<html>"),
    httpx.Response(200, json=[1, 2]),
])
def test_a_malformed_answer_falls_back_and_counts_against_the_breaker(
        answer: httpx.Response) -> None:
    with _client(Script(answer), breaker_failures=1, breaker_cooldown_s=60) as c:
        a = c.assign("exp", "u")
        assert a.fallback and a.reason
        assert c.breaker.is_open


def test_an_unexpected_error_falls_back_and_releases_the_half_open_trial() -> None:
    now = [0.0]
    script = Script(RuntimeError("boom"))
    with _client(script, breaker_failures=1, breaker_cooldown_s=5) as c:
        c.breaker = CircuitBreaker(1, 5, clock=lambda: now[0])
        assert c.assign("exp", "u").reason == "RuntimeError: boom"
        now[0] = 6  # half-open: the trial fails the same way
        assert c.assign("exp", "u").reason == "RuntimeError: boom"
        now[0] = 12  # not stuck: another trial goes to the server
        c.assign("exp", "u")
    assert len(script.posts) == 3


def test_recommend_exposes_the_interleaving_log_and_the_fallback_has_none() -> None:
    log = {"rankers": ["ctl", "t1"], "teams": ["t1", "ctl"], "draft": [["t1", "ctl"]],
           "pairs": [{"a": "ctl", "b": "t1", "propensity": 1.0}]}
    out = {k: v for k, v in OK.items() if k not in ("variant", "snapshot_id")}
    out.update(items=[{"item_id": "m2", "score": 2.5}, {"item_id": "m1", "score": 1.0}],
               interleaving=log, propensity=1.0)
    bad = {**out, "interleaving": ["not", "a", "log"]}
    script = Script(httpx.Response(200, json=out), httpx.Response(503, json={}))
    cands = [{"id": f"m{i}", "title": f"M{i}"} for i in range(1, 6)]
    with _client(script, backoff_s=0.001) as c:
        r = c.recommend("exp", "u1", candidates=cands, k=2, user_text="hi")
        f = c.recommend("exp", "u1", candidates=cands, k=2, user_text="hi")
    assert not r.fallback and r.interleaving == log and r.should_log
    assert f.fallback and f.interleaving is None
    with _client(Script(httpx.Response(200, json=bad)), backoff_s=0.001) as c:
        assert c.recommend("exp", "u1", candidates=cands, k=2, user_text="hi").fallback
