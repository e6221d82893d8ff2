"""Scoring commands: ``armlab score``, ``armlab catalog``, ``armlab scorer``,
``armlab bench scoring`` and ``armlab quality``. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from armlab.errors import ValidationFailed


def variant_arg(text: str) -> dict[str, Any]:
    """A variant as inline JSON, @file.json, or a bare kind name (bi_encoder, popularity...)."""
    from armlab.core.variants import KINDS

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValidationFailed(f"cannot read variant file {text[1:]}: {exc}",
                                   field="variant") from None
    if text in KINDS:
        return {"kind": text}
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"--variant is not JSON ({exc.msg}); give a JSON object, "
                               "@file.json or a kind name", field="variant") from None
    if not isinstance(v, dict):
        raise ValidationFailed("--variant must be a JSON object", field="variant")
    return v


def score_cmd(
    variant: str = typer.Option(..., help="Variant JSON, @file.json or a kind name."),
    items: Path = typer.Option(..., help="JSONL (or CSV) items: {\"id\", \"title\", ...}."),
    user_text: str = typer.Option("", help="The user's text (used as given by default)."),
    history: str = typer.Option("", help="Comma-separated item ids from --items as history."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    k: int = typer.Option(0, help="Return the best k (0 = all)."),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score items for one user with a variant; prints [{"item_id", "score"}] best first."""
    from armlab.adapters.data.items import read_items_file
    from armlab.adapters.scoring.checkpoints import set_cpu_threads
    from armlab.adapters.scoring.scorers import UserContext, build_scorer, rank
    from armlab.core.variants import parse_variant
    from armlab.settings import get_settings

    set_cpu_threads(threads)
    v = parse_variant(variant_arg(variant))
    rows = read_items_file(items)
    by_id = {r["id"]: r for r in rows}
    hist = [by_id.get(h.strip(), {"id": h.strip()}) for h in history.split(",") if h.strip()]
    if not user_text and not hist and v.kind != "popularity":
        raise ValidationFailed("give --user-text or --history", field="user_text")
    st = get_settings()
    scorer = build_scorer(v, device=device, models_dir=st.models_dir,
                          cache_dir=st.home / "model-cache")
    ranked = rank(scorer, UserContext(text=user_text, history=hist), rows, k or len(rows))
    if as_json:
        typer.echo(json.dumps(ranked))
    else:
        for r in ranked:
            typer.echo(f"{r['score']:+.5f}  {r['item_id']}  {by_id[r['item_id']]['title']}")


def catalog_load(
    name: str = typer.Argument(..., help="Catalog name."),
    file: Path = typer.Argument(..., help="JSONL or CSV with id, title, text, ..."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Load (or reload) a catalog into the database."""
    from armlab.adapters.data.items import read_items_file
    from armlab.bootstrap import bootstrap
    from armlab.services.catalog import store_catalog
    from armlab.settings import get_settings

    items = read_items_file(file)
    services = bootstrap(get_settings())
    try:
        out = store_catalog(services.uow, name=name, items=items)
    finally:
        services.close()
    if as_json:
        typer.echo(json.dumps(out))
    else:
        state = "updated" if out["changed"] else "unchanged"
        typer.echo(f"catalog {out['name']} v{out['version']}: {out['item_count']} items "
                   f"({state}, sha256 {out['content_hash'][:12]})")


def catalog_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """List catalogs with their versions."""
    from armlab.bootstrap import bootstrap
    from armlab.services.catalog import list_catalogs
    from armlab.settings import get_settings

    services = bootstrap(get_settings())
    try:
        with services.uow() as uow:
            rows = list_catalogs(uow)
    finally:
        services.close()
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        for r in rows:
            typer.echo(f"{r['name']}  v{r['version']}  {r['item_count']} items")


def scorer_cmd(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8100),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_batch: int = typer.Option(32, help="Requests merged into one batch at most."),
    max_wait_ms: float = typer.Option(2.0, help="How long a batch waits for company."),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
) -> None:
    """Run the batching scorer as its own process (POST /score, GET /stats)."""
    import uvicorn

    from armlab.adapters.scoring.checkpoints import set_cpu_threads
    from armlab.entrypoints.api.scorer_app import create_scorer_app
    from armlab.settings import get_settings

    st = get_settings()
    set_cpu_threads(threads or st.scoring_threads)
    app_ = create_scorer_app(device=device, models_dir=st.models_dir,
                             cache_dir=st.home / "model-cache", max_batch=max_batch,
                             max_wait_s=max_wait_ms / 1000)
    uvicorn.run(app_, host=host, port=port, log_level=st.log_level.lower())


def quality_cmd(
    variants: str = typer.Option(
        "", help="Comma-separated preset names (default: all of them: popularity, "
                 "bi_titles, bi_rich, bi_mean, bi_rich_pop, bi_mean_pop, lm_rerank, "
                 "lm_rerank_pop)."),
    lm_users: int = typer.Option(100, help="Evaluation users for the LM rerankers "
                                           "(0 = all)."),
    max_users: int = typer.Option(0, help="Limit users for every variant (0 = all)."),
    val_share: float = typer.Option(0.3, help="Share of users held out to tune weights."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """MovieLens-100k HR@10 / NDCG@10 on evaluation users: sampled (1 held-out vs 99
    unseen) and full-catalogue protocols; prior weights tuned on validation users."""
    import sys

    from armlab.adapters.scoring.checkpoints import set_cpu_threads
    from armlab.services.quality import DEFAULT_PRESETS, run_quality

    set_cpu_threads(threads)
    names = [v.strip() for v in variants.split(",") if v.strip()] or list(DEFAULT_PRESETS)
    out = run_quality(names, lm_users=lm_users, max_users=max_users, seed=seed,
                      device=device, val_share=val_share,
                      progress=lambda m: print(m, file=sys.stderr, flush=True))
    if as_json:
        typer.echo(json.dumps(out))
    else:
        typer.echo(f"{'variant':<15}{'users':>6}{'HR@10':>8}{'NDCG@10':>9}"
                   f"{'full HR@10':>12}{'full NDCG':>11}  tuned weight")
        for name, r in out["results"].items():
            tuned = r.get("tuned") or r.get("inner_tuned")
            typer.echo(f"{name:<15}{r['users']:>6}{r['hr@10']:>8.4f}{r['ndcg@10']:>9.4f}"
                       f"{r['full']['hr@10']:>12.4f}{r['full']['ndcg@10']:>11.4f}  "
                       f"{tuned['weight'] if tuned else '-'}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    catalog_app = typer.Typer(help="Item catalogs (versioned; reloading changed content "
                              "bumps the version and invalidates cached embeddings).",
                              no_args_is_help=True)
    app.add_typer(catalog_app, name="catalog")
    app.command("score")(score_cmd)
    catalog_app.command("load")(catalog_load)
    catalog_app.command("list")(catalog_list)
    app.command("scorer")(scorer_cmd)
    app.command("quality")(quality_cmd)
