"""Registry API on SQLite through FastAPI's TestClient: every route, auth, validation, 409s."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from armlab.bootstrap import bootstrap
from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings
from tests.builders import MINILM, spec_body

TOKENS = "ops:admin:admin-secret,app:producer:producer-secret,ro:reader:reader-secret"
ADMIN = {"Authorization": "Bearer admin-secret"}
PRODUCER = {"Authorization": "Bearer producer-secret"}
READER = {"Authorization": "Bearer reader-secret"}


def make_spec(**overrides: Any) -> dict[str, Any]:
    return spec_body(**{
        "key": "home-recs", "treatments": [("minilm", MINILM)],
        "name": "Home page recommendations", "unit": "request",
        "reward": {"kind": "binary", "metric": "click"},
        "policy": {"name": "thompson", "params": {}}, "exploration_floor": 0.02,
        "burn_in": 100, "attribution_window_s": 3600,
        "sequential": {"alpha": 0.05, "auto_stop": False}, **overrides})


@pytest.fixture()
def settings(sqlite_url: str) -> Settings:
    return Settings(database_url=sqlite_url, auth_tokens=TOKENS, auth_disabled=False,
                    transport="memory")


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def create(client: TestClient, **overrides: Any) -> dict[str, Any]:
    r = client.post("/v1/experiments", json=make_spec(**overrides), headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def bring_to(client: TestClient, status: str, key: str = "home-recs") -> dict[str, Any]:
    """Register ``key`` and move it to ``status`` through the API."""
    exp = create(client, key=key)
    if status in ("running", "stopped", "shipped"):
        exp = client.post(f"/v1/experiments/{key}/start", headers=ADMIN).json()
    if status == "stopped":
        exp = client.post(f"/v1/experiments/{key}/stop", json={"reason": "r"}, headers=ADMIN).json()
    if status == "shipped":
        exp = client.post(
            f"/v1/experiments/{key}/ship", json={"arm": "minilm", "reason": "r"}, headers=ADMIN
        ).json()
    assert exp["status"] == status
    return exp


def audit(client: TestClient, key: str = "home-recs") -> list[dict[str, Any]]:
    r = client.get(f"/v1/experiments/{key}/audit", headers=READER)
    assert r.status_code == 200, r.text
    return r.json()["entries"]  # type: ignore[no-any-return]


# --- health ---------------------------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok"}


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # a file where the database's directory should be
    settings = Settings(database_url=f"sqlite:///{blocker}/x.db", auth_tokens=TOKENS,
                        transport="memory")
    services = bootstrap(settings, engine=create_engine(f"sqlite:///{blocker}/x.db"))
    with TestClient(create_app(settings, services=services)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["type"] == "ServiceUnavailable"
    assert "the database is not reachable" in body["detail"]


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/experiments", "/v1/experiments/{key}", "/v1/experiments/{key}/start",
              "/v1/experiments/{key}/stop", "/v1/experiments/{key}/ship",
              "/v1/experiments/{key}/results", "/v1/experiments/{key}/audit",
              "/healthz", "/readyz"):
        assert p in paths, p
    assert "Register an experiment" in paths["/v1/experiments"]["post"]["description"]


# --- the happy path through every route -----------------------------------------------------


def test_full_lifecycle_through_every_route(client: TestClient) -> None:
    exp = create(client)
    assert exp["status"] == "draft" and exp["version"] == 1
    assert exp["control_arm_key"] == "control"
    assert len(exp["salt"]) == 32 and int(exp["salt"], 16) >= 0  # random hex
    assert exp["sequential"]["alpha"] == 0.05 and exp["sequential"]["correction"] == "holm"
    assert exp["policy"] == {"name": "thompson", "params": {}}  # policy defaults apply
    assert [a["key"] for a in exp["arms"]] == ["control", "minilm"]
    assert exp["arms"][1]["variant"]["model"] == "all-MiniLM-L6-v2"

    listed = client.get("/v1/experiments", headers=READER).json()["experiments"]
    assert [e["key"] for e in listed] == ["home-recs"]
    assert client.get("/v1/experiments?status=running", headers=READER).json() == {
        "experiments": []
    }
    shown = client.get("/v1/experiments/home-recs", headers=READER).json()
    assert shown == {**exp, "salt": None}  # the salt is for admins only
    assert client.get("/v1/experiments/home-recs", headers=ADMIN).json() == exp

    started = client.post("/v1/experiments/home-recs/start", headers=ADMIN).json()
    assert started["status"] == "running" and started["version"] == 2
    assert started["started_at"] is not None
    running = client.get("/v1/experiments?status=running", headers=PRODUCER).json()
    assert [e["key"] for e in running["experiments"]] == ["home-recs"]

    res = client.get("/v1/experiments/home-recs/results", headers=READER).json()
    assert res["status"] == "running" and res["shipped_arm"] is None
    assert [(a["key"], a["impressions"], a["reward_sum"], a["weight"]) for a in res["arms"]] == [
        ("control", 0, 0.0, 0.5), ("minilm", 0, 0.0, 0.5)
    ]

    stopped = client.post(
        "/v1/experiments/home-recs/stop", json={"reason": "guardrail"}, headers=ADMIN
    ).json()
    assert stopped["status"] == "stopped" and stopped["ended_at"] is not None

    shipped = client.post(
        "/v1/experiments/home-recs/ship",
        json={"arm": "minilm", "reason": "clear win", "force": True},
        headers=ADMIN,
    ).json()
    assert shipped["status"] == "shipped" and shipped["shipped_arm"] == "minilm"
    assert shipped["version"] == 4

    res = client.get("/v1/experiments/home-recs/results", headers=READER).json()
    assert {a["key"]: a["weight"] for a in res["arms"]} == {"control": 0.0, "minilm": 1.0}

    rows = audit(client)
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("create", "ops"), ("start", "ops"), ("stop", "ops"), ("ship", "ops")
    ]
    assert rows[2]["reason"] == "guardrail"
    assert rows[2]["before"] == {"status": "running", "shipped_arm": None, "version": 2}
    assert rows[2]["after"] == {"status": "stopped", "shipped_arm": None, "version": 3}
    assert rows[3]["after"] == {"status": "shipped", "shipped_arm": "minilm", "version": 4}
    assert rows[3]["evidence"] == {"force": True}
    # the chain of versions has no gaps: each change starts where the previous one ended
    for prev, cur in zip(rows[1:], rows[2:], strict=False):
        assert cur["before"]["version"] == prev["after"]["version"]


def test_ship_directly_from_running_and_start_reason(client: TestClient) -> None:
    create(client)
    r = client.post("/v1/experiments/home-recs/start", json={"reason": "go"}, headers=ADMIN)
    assert r.status_code == 200
    assert audit(client)[-1]["reason"] == "go"
    r = client.post("/v1/experiments/home-recs/ship", json={"arm": "control", "reason": "meh"},
                    headers=ADMIN)
    assert r.status_code == 200 and r.json()["shipped_arm"] == "control"
    assert audit(client)[-1]["evidence"] == {}


def test_given_salt_is_kept_and_salts_differ_otherwise(client: TestClient) -> None:
    a = create(client, key="a", salt="fixed-salt")
    b = create(client, key="b")
    c = create(client, key="c")
    assert a["salt"] == "fixed-salt"
    assert b["salt"] != c["salt"]


# --- auth -----------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/experiments", "admin", make_spec(key="other")),
    ("GET", "/v1/experiments", "reader", None),
    ("GET", "/v1/experiments/home-recs", "reader", None),
    ("POST", "/v1/experiments/home-recs/start", "admin", None),
    ("POST", "/v1/experiments/home-recs/stop", "admin", {"reason": "x"}),
    ("POST", "/v1/experiments/home-recs/ship", "admin", {"arm": "minilm", "reason": "x"}),
    ("GET", "/v1/experiments/home-recs/results", "reader", None),
    ("GET", "/v1/experiments/home-recs/audit", "reader", None),
]


@pytest.mark.parametrize(("method", "path", "role", "body"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic admin-secret"}],
    ids=["no-header", "bad-token", "basic-scheme"],
)
def test_unauthenticated_requests_get_401_and_change_nothing(
    client: TestClient, method: str, path: str, role: str, body: Any, headers: dict[str, str]
) -> None:
    bring_to(client, "running")
    before = client.get("/v1/experiments/home-recs", headers=READER).json()
    r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["type"] == "Unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/experiments/home-recs", headers=READER).json() == before
    assert len(client.get("/v1/experiments", headers=READER).json()["experiments"]) == 1


@pytest.mark.parametrize(("method", "path", "role", "body"),
                         [r for r in ROUTES if r[2] == "admin"])
@pytest.mark.parametrize("headers", [READER, PRODUCER], ids=["reader", "producer"])
def test_admin_routes_refuse_other_roles_with_403(
    client: TestClient, method: str, path: str, role: str, body: Any, headers: dict[str, str]
) -> None:
    bring_to(client, "running")
    before = client.get("/v1/experiments/home-recs", headers=READER).json()
    n_audit = len(audit(client))
    r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["type"] == "Forbidden" and "needs role 'admin'" in r.json()["detail"]
    assert client.get("/v1/experiments/home-recs", headers=READER).json() == before
    assert len(audit(client)) == n_audit


@pytest.mark.parametrize(("method", "path", "role", "body"),
                         [r for r in ROUTES if r[2] == "reader"])
@pytest.mark.parametrize("headers", [READER, PRODUCER, ADMIN], ids=["reader", "producer", "admin"])
def test_read_routes_accept_every_role(
    client: TestClient, method: str, path: str, role: str, body: Any, headers: dict[str, str]
) -> None:
    bring_to(client, "running")
    assert client.request(method, path, headers=headers).status_code == 200


@pytest.mark.parametrize("header", ["Bearer ", "admin-secret", "Bearer admin-secretX"])
def test_malformed_authorization_headers_are_401(client: TestClient, header: str) -> None:
    r = client.get("/v1/experiments", headers={"Authorization": header})
    assert r.status_code == 401 and r.json()["type"] == "Unauthorized"


def test_unknown_experiment_is_404_on_every_keyed_route(client: TestClient) -> None:
    for method, path, _role, body in ROUTES:
        if "home-recs" not in path:
            continue
        r = client.request(method, path.replace("home-recs", "nope"), json=body, headers=ADMIN)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["type"] == "ExperimentNotFound"
        assert "'nope'" in r.json()["detail"]


# --- validation: one row per rule, each a 422 naming the field ------------------------------


def _arms(*arms: dict[str, Any]) -> list[dict[str, Any]]:
    return list(arms)


CTRL = {"key": "control", "control": True, "variant": {"kind": "popularity"}}
TREAT = {"key": "minilm", "variant": {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}}


def _with(path: str, value: Any) -> dict[str, Any]:
    """make_spec() with one dotted path replaced (``policy.params.epsilon``)."""
    spec = copy.deepcopy(make_spec())
    node: Any = spec
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def _without(field: str) -> dict[str, Any]:
    spec = make_spec()
    del spec[field]
    return spec


EG = {"name": "epsilon_greedy"}
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, body, field named in the error, fragment of the message)
    ("one-arm", make_spec(arms=[CTRL]), "arms", "at least 2"),
    ("no-arms", make_spec(arms=[]), "arms", "at least 2"),
    ("arms-missing", _without("arms"), "arms", "required"),
    ("no-control", make_spec(arms=[{**CTRL, "control": False}, TREAT]), "arms",
     "exactly one arm must have control=true; found 0"),
    ("two-controls", make_spec(arms=[CTRL, {**TREAT, "control": True}]), "arms",
     "found 2 (arms.0, arms.1)"),
    ("duplicate-arm-key", make_spec(arms=[CTRL, {**TREAT, "key": "control"}]), "arms",
     "arms.1.key: duplicate arm key 'control'"),
    ("arm-key-upper", _with("arms.1.key", "MiniLM"), "arms.1.key", "pattern"),
    ("arm-key-leading-dash", _with("arms.1.key", "-x"), "arms.1.key", "pattern"),
    ("arm-key-too-long", _with("arms.1.key", "a" * 65), "arms.1.key", "pattern"),
    ("arm-key-empty", _with("arms.0.key", ""), "arms.0.key", "pattern"),
    ("arm-variant-missing", make_spec(arms=[CTRL, {"key": "x"}]), "arms.1.variant", "required"),
    ("variant-kind-unknown", _with("arms.1.variant", {"kind": "gpt"}), "arms.1.variant",
     "variant.kind"),
    ("variant-kind-missing", _with("arms.1.variant", {"model": "m"}), "arms.1.variant",
     "variant.kind"),
    ("variant-dtype", _with("arms.1.variant", {"kind": "bi_encoder", "dtype": "fp8"}),
     "arms.1.variant", "variant.dtype"),
    ("arm-extra-field", _with("arms.1.colour", "red"), "arms.1.colour", "not permitted"),
    ("key-missing", _without("key"), "key", "required"),
    ("key-spaces", make_spec(key="Home Recs"), "key", "pattern"),
    ("key-too-long", make_spec(key="k" * 65), "key", "pattern"),
    ("name-too-long", make_spec(name="n" * 201), "name", "at most 200"),
    ("unit", make_spec(unit="session"), "unit", "'request' or 'user'"),
    ("reward-kind", _with("reward.kind", "ordinal"), "reward.kind", "binary"),
    ("reward-metric-empty", _with("reward.metric", ""), "reward.metric", "at least 1"),
    ("policy-name", _with("policy.name", "ucb"), "policy.name", "thompson"),
    ("sequential-method", _with("sequential.method", "bayes"), "sequential.method", "'ipw'"),
    ("min-effect-zero", _with("sequential.min_effect", 0), "sequential.min_effect",
     "greater than 0"),
    ("min-effect-negative", _with("sequential.min_effect", -0.01), "sequential.min_effect",
     "greater than 0"),
    ("min-effect-text", _with("sequential.min_effect", "small"), "sequential.min_effect",
     "number"),
    ("epsilon-above-1", make_spec(policy={**EG, "params": {"epsilon": 1.5}}), "policy.params",
     "params.epsilon"),
    ("epsilon-negative", make_spec(policy={**EG, "params": {"epsilon": -0.1}}), "policy.params",
     "params.epsilon"),
    ("decay-c-zero", make_spec(policy={**EG, "params": {"schedule": "decay", "decay_c": 0}}),
     "policy.params", "params.decay_c"),
    ("schedule-unknown", make_spec(policy={**EG, "params": {"schedule": "exp"}}),
     "policy.params", "params.schedule"),
    ("prior-alpha-zero", _with("policy.params", {"prior_alpha": 0}), "policy.params",
     "params.prior_alpha"),
    ("prior-beta-negative", _with("policy.params", {"prior_beta": -2}), "policy.params",
     "params.prior_beta"),
    ("draws-too-few", _with("policy.params", {"n_draws": 5}), "policy.params",
     "params.n_draws"),
    ("thompson-method", _with("policy.params", {"method": "exact"}), "policy.params",
     "params.method"),
    ("prior-mean-nan", _with("policy.params", {"prior_mean": "nan"}), "policy.params",
     "params.prior_mean"),
    ("top-two-beta-1",
     make_spec(policy={"name": "top_two_thompson", "params": {"top_two_beta": 1.0}}),
     "policy.params", "params.top_two_beta"),
    ("top-two-beta-0",
     make_spec(policy={"name": "top_two_thompson", "params": {"top_two_beta": 0}}),
     "policy.params", "params.top_two_beta"),
    ("plain-thompson-has-no-top-two-beta", _with("policy.params", {"top_two_beta": 0.5}),
     "policy.params", "params.top_two_beta"),
    ("unknown-policy-param", _with("policy.params", {"temperature": 2}), "policy.params",
     "params.temperature"),
    ("uniform-takes-no-epsilon", make_spec(policy={"name": "uniform", "params": {"epsilon": 0.1}}),
     "policy.params", "params.epsilon"),
    ("floor-at-1-over-k", make_spec(exploration_floor=0.5), "exploration_floor", "below 1/K"),
    ("floor-above-1-over-k-3-arms",
     make_spec(arms=[CTRL, TREAT, {**TREAT, "key": "t2"}], exploration_floor=0.34),
     "exploration_floor", "K=3"),
    ("floor-negative", make_spec(exploration_floor=-0.01), "exploration_floor",
     "greater than or equal to 0"),
    ("floor-not-a-number", make_spec(exploration_floor="lots"), "exploration_floor", "number"),
    ("burn-in-negative", make_spec(burn_in=-1), "burn_in", "greater than or equal to 0"),
    ("burn-in-fraction", make_spec(burn_in=1.5), "burn_in", "integer"),
    ("window-zero", make_spec(attribution_window_s=0), "attribution_window_s", "greater than 0"),
    ("window-negative", make_spec(attribution_window_s=-5), "attribution_window_s",
     "greater than 0"),
    ("alpha-zero", _with("sequential.alpha", 0), "sequential.alpha", "greater than 0"),
    ("alpha-one", _with("sequential.alpha", 1), "sequential.alpha", "less than 1"),
    ("tau2-zero", _with("sequential.tau2", 0), "sequential.tau2", "greater than 0"),
    ("tau2-negative", _with("sequential.tau2", -1.0), "sequential.tau2", "greater than 0"),
    ("min-samples-negative", _with("sequential.min_samples", -1), "sequential.min_samples",
     "greater than or equal to 0"),
    ("max-n-zero", _with("sequential.max_n", 0), "sequential.max_n", "greater than 0"),
    ("correction", _with("sequential.correction", "sidak"), "sequential.correction", "holm"),
    ("sequential-typo", _with("sequential.aplha", 0.1), "sequential.aplha", "not permitted"),
    ("salt-bad-chars", make_spec(salt="has space"), "salt", "pattern"),
    ("unknown-top-level", make_spec(colour="blue"), "colour", "not permitted"),
]


@pytest.mark.parametrize(("body", "field", "fragment"), [r[1:] for r in INVALID],
                         ids=[r[0] for r in INVALID])
def test_invalid_registration_is_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, fragment: str
) -> None:
    r = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 422, r.text
    payload = r.json()
    assert payload["type"] == "ValidationFailed"
    fields = [e["field"] for e in payload["errors"]]
    assert field in fields, payload
    assert fragment in payload["detail"], payload["detail"]
    # nothing was registered
    assert client.get("/v1/experiments", headers=READER).json() == {"experiments": []}


def test_valid_edge_values_are_accepted(client: TestClient) -> None:
    create(client, key="a", exploration_floor=0.0, burn_in=0, attribution_window_s=1)
    create(client, key="b", exploration_floor=0.333,
           arms=[CTRL, TREAT, {**TREAT, "key": "t2"}],
           policy={"name": "epsilon_greedy",
                   "params": {"epsilon": 1.0, "schedule": "decay", "decay_c": 0.5}})
    create(client, key="c", unit="user", reward={"kind": "continuous", "metric": "dwell"},
           policy={"name": "top_two_thompson",
                   "params": {"top_two_beta": 0.7, "method": "monte_carlo", "n_draws": 1000}},
           sequential={"alpha": 0.1, "tau2": 0.5, "max_n": 10_000, "correction": "bonferroni",
                       "auto_stop": True, "min_samples": 0})
    c = client.get("/v1/experiments/c", headers=READER).json()
    assert c["policy"]["params"] == {"top_two_beta": 0.7, "method": "monte_carlo",
                                     "n_draws": 1000}
    assert c["unit"] == "user"
    # whatever the registry accepts, the allocator can build
    from armlab.core.policies import make_policy

    for key in ("a", "b", "c"):
        e = client.get(f"/v1/experiments/{key}", headers=READER).json()
        make_policy(e["policy"]["name"], e["policy"]["params"], reward_kind=e["reward"]["kind"],
                    floor=e["exploration_floor"], burn_in=e["burn_in"])
    assert c["sequential"]["tau2"] == 0.5 and c["sequential"]["auto_stop"] is True
    assert c["sequential"]["method"] == "auto" and c["sequential"]["min_effect"] is None


def test_futility_rule_and_method_are_registered_and_used(client: TestClient) -> None:
    """``sequential.min_effect`` and ``sequential.method`` reach the stored spec and the
    sequential evaluation the results endpoint shows."""
    create(client, key="fut", policy={"name": "uniform", "params": {}},
           sequential={"method": "ipw", "min_effect": 0.02, "alpha": 0.05})
    e = client.get("/v1/experiments/fut", headers=READER).json()
    assert e["sequential"]["method"] == "ipw" and e["sequential"]["min_effect"] == 0.02
    client.post("/v1/experiments/fut/start", headers=ADMIN)
    seq = client.get("/v1/experiments/fut/results", headers=READER).json()["sequential"]
    assert seq["method"] == "ipw"  # uniform would default to plain mSPRT

def test_body_that_is_not_json_is_422(client: TestClient) -> None:
    r = client.post("/v1/experiments", content=b"{not json", headers={
        **ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["type"] == "ValidationFailed"


def test_duplicate_key_is_409(client: TestClient) -> None:
    create(client)
    r = client.post("/v1/experiments", json=make_spec(), headers=ADMIN)
    assert r.status_code == 409
    assert r.json()["type"] == "ExperimentExists"
    assert len(audit(client)) == 1


def test_lifecycle_bodies_are_validated(client: TestClient) -> None:
    bring_to(client, "running")
    r = client.post("/v1/experiments/home-recs/stop", json={}, headers=ADMIN)
    assert r.status_code == 422 and "reason" in [e["field"] for e in r.json()["errors"]]
    r = client.post("/v1/experiments/home-recs/stop", json={"reason": ""}, headers=ADMIN)
    assert r.status_code == 422 and "reason" in [e["field"] for e in r.json()["errors"]]
    r = client.post("/v1/experiments/home-recs/ship", json={"reason": "x"}, headers=ADMIN)
    assert r.status_code == 422 and "arm" in [e["field"] for e in r.json()["errors"]]
    r = client.post("/v1/experiments/home-recs/ship", json={"arm": "minilm", "reason": "x",
                                                            "force": "maybe"}, headers=ADMIN)
    assert r.status_code == 422 and "force" in [e["field"] for e in r.json()["errors"]]
    r = client.get("/v1/experiments?status=archived", headers=READER)
    assert r.status_code == 422 and "status" in [e["field"] for e in r.json()["errors"]]
    assert client.get("/v1/experiments/home-recs", headers=READER).json()["status"] == "running"


# --- the state machine ----------------------------------------------------------------------

LEGAL = {("draft", "start"), ("running", "stop"), ("running", "ship"), ("stopped", "ship")}
ILLEGAL = [
    (s, a) for s in ("draft", "running", "stopped", "shipped") for a in ("start", "stop", "ship")
    if (s, a) not in LEGAL
]
BODIES = {"start": None, "stop": {"reason": "x"}, "ship": {"arm": "control", "reason": "x"}}


@pytest.mark.parametrize(("status", "action"), ILLEGAL, ids=[f"{s}-{a}" for s, a in ILLEGAL])
def test_illegal_transitions_are_409_and_change_nothing(
    client: TestClient, status: str, action: str
) -> None:
    before = bring_to(client, status)
    n_audit = len(audit(client))
    r = client.post(f"/v1/experiments/home-recs/{action}", json=BODIES[action], headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "IllegalTransition"
    assert f"it is {status}" in r.json()["detail"]
    after = client.get("/v1/experiments/home-recs", headers=ADMIN).json()
    assert after == before
    assert len(audit(client)) == n_audit


@pytest.mark.parametrize("status", ["running", "stopped"])
def test_ship_of_unknown_arm_is_404_and_changes_nothing(client: TestClient, status: str) -> None:
    before = bring_to(client, status)
    n_audit = len(audit(client))
    r = client.post("/v1/experiments/home-recs/ship", json={"arm": "ghost", "reason": "x"},
                    headers=ADMIN)
    assert r.status_code == 404
    assert r.json()["type"] == "ArmNotFound"
    assert "ghost" in r.json()["detail"] and "control, minilm" in r.json()["detail"]
    assert client.get("/v1/experiments/home-recs", headers=ADMIN).json() == before
    assert len(audit(client)) == n_audit


def _raw(spec: dict[str, Any], path: str, token: str) -> bytes:
    """The spec as JSON with the value at dotted ``path`` replaced by a raw token (NaN...)."""
    import json

    body = copy.deepcopy(spec)
    *head, last = path.split(".")
    target: Any = body
    for p in head:
        target = target[int(p)] if p.isdigit() else target.setdefault(p, {})
    target[last] = "@@TOKEN@@"
    return json.dumps(body).replace('"@@TOKEN@@"', token).encode()


@pytest.mark.parametrize(("path", "token", "field"), [
    ("sequential.theta0", "NaN", "sequential.theta0"),
    ("sequential.theta0", "Infinity", "sequential.theta0"),
    ("sequential.tau2", "Infinity", "sequential.tau2"),
    ("sequential.alpha", "NaN", "sequential.alpha"),
    ("exploration_floor", "NaN", "exploration_floor"),
    ("policy.params.prior_alpha", "NaN", "policy.params"),
    ("policy.params.prior_alpha", "Infinity", "policy.params"),
    ("burn_in", "2147483648", "burn_in"),
    ("sequential.min_samples", "2147483648", "sequential.min_samples"),
    ("sequential.max_n", "1e400", "sequential.max_n"),
    ("sequential.max_n", "99999999999999999999999", "sequential.max_n"),
    ("arms.1.variant.item_template", '"' + "{title}" * 10_000 + '"', "arms.1.variant"),
    ("description", '"' + "x" * 10_001 + '"', "description"),
])
def test_numbers_and_strings_that_do_not_fit_are_422(
    client: TestClient, path: str, token: str, field: str
) -> None:
    body = _raw(make_spec(), path, token)
    r = client.post("/v1/experiments", content=body,
                    headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert client.get("/v1/experiments", headers=READER).json() == {"experiments": []}


def test_epsilon_greedy_decay_c_must_be_finite(client: TestClient) -> None:
    for token in ("NaN", "Infinity"):
        spec = make_spec(policy={"name": "epsilon_greedy", "params": {}})
        r = client.post("/v1/experiments", content=_raw(spec, "policy.params.decay_c", token),
                        headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 422 and "decay_c" in r.text, r.text


def test_oversized_bodies_are_413_before_reading_or_auth(client: TestClient) -> None:
    import asyncio

    big = b"x" * (50 * 1024 * 1024)
    for url in ("/v1/experiments", "/v1/events", "/v1/experiments/k/assign"):
        r = client.post(url, content=big, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 413, (url, r.status_code)
        assert r.json()["type"] == "PayloadTooLarge"
    # with a Content-Length over the limit, nothing is read: receive() is never called
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/events", "headers": [
        (b"content-length", str(50 * 1024 * 1024).encode())], "query_string": b""}
    asyncio.run(client.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    # chunked (no Content-Length) is counted as it arrives
    chunks = [b"x" * (1024 * 1024)] * 20

    async def chunked() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}

    sent.clear()
    scope["path"] = "/v1/experiments"
    scope["headers"] = [(b"authorization", b"Bearer admin-secret"),
                        (b"content-type", b"application/json")]
    asyncio.run(client.app(scope, chunked, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413 and len(chunks) < 19
    # a body under the limit is untouched
    assert client.post("/v1/experiments", json=make_spec(), headers=ADMIN).status_code == 201


def test_salt_is_shown_to_admins_only(client: TestClient) -> None:
    create(client, key="salty", salt="s3cret-salt")
    assert client.get("/v1/experiments/salty", headers=ADMIN).json()["salt"] == "s3cret-salt"
    for who in (READER, PRODUCER):
        r = client.get("/v1/experiments/salty", headers=who)
        assert r.status_code == 200 and r.json()["salt"] is None
        assert "s3cret-salt" not in client.get("/v1/experiments", headers=who).text
        assert "s3cret-salt" not in client.get("/v1/experiments/salty/audit", headers=who).text


@pytest.mark.parametrize("raw", ["topsecretvalue", "ops:admin:ok,justthesecret9",
                                 "ops:s3cretvalue9:admin", "ops:admin:"])
def test_malformed_auth_tokens_never_print_the_secret(raw: str) -> None:
    from armlab.entrypoints.api.auth import parse_tokens
    from armlab.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as err:
        parse_tokens(raw)
    for secret in ("topsecretvalue", "justthesecret9", "s3cretvalue9"):
        assert secret not in err.value.message
    assert "ARMLAB_AUTH_TOKENS entry" in err.value.message
