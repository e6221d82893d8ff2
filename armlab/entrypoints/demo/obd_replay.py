"""``armlab replay obd``: real logged bandit data through armlab, then off-policy evaluation.

1. Register two experiments, ``obd-<campaign>-random`` and ``obd-<campaign>-bts`` (one arm
   per item, ``item-0`` as the nominal control), through the registry service, and start them.
2. Stream both logs in time order through the producer SDK (impression per row with
   ``propensity = propensity_score`` and the position in the context; a ``click`` feedback
   per clicked row) and ingest them with the consumer runner (memory bus + SQLite embedded,
   Kafka + PostgreSQL with ``--stack local``).
3. Read the logs back from the impressions table and estimate, from the uniform-random log,
   the click rate ZOZOTOWN's Bernoulli-TS policy would have had (IPW, SNIPW, DR with CIs),
   beside the click rate that policy actually logged. The BTS action distribution per position
   comes from the bts log itself (:func:`armlab.adapters.data.obd.estimate_policy_from`).
4. Stop both experiments with the evaluation as evidence in the audit log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from armlab.adapters.data import obd
from armlab.bootstrap import make_settings, open_services
from armlab.core.clock import utcnow
from armlab.core.specs import ExperimentSpec
from armlab.core.stats import ope
from armlab.services.experiments import ExperimentUseCases
from armlab.services.ope import load_logged_by_key

ACTOR = "replay-obd"
CAVEAT = (
    "The obp sample is small: 10,000 rows per log and only a few dozen clicks, so every "
    "interval here is wide (the full Open Bandit Dataset has ~26M rows). Read the estimates as "
    "'consistent with' rather than as a ranking."
)


def _spec(key: str, log: obd.OBDLog) -> ExperimentSpec:
    policy = "uniform" if log.policy == "random" else "thompson"
    return ExperimentSpec.model_validate({
        "key": key,
        "name": f"Open Bandit Dataset replay: {log.campaign} campaign, {log.policy} policy",
        "description": (
            f"ZOZOTOWN's {'uniform-random' if log.policy == 'random' else 'Bernoulli-TS'} "
            f"log ({log.n} rows, {log.clicks} clicks) replayed from {log.path}. One arm per "
            "item; position in the impression context; propensity = propensity_score. "
            "Data: Open Bandit Dataset (Saito et al. 2020), CC BY 4.0."
        ),
        "unit": "request",
        "reward": {"kind": "binary", "metric": "click"},
        "policy": {"name": policy, "params": {}},
        "attribution_window_s": 3600,
        "sequential": {"alpha": 0.05, "auto_stop": False},
        "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, a in enumerate(log.arms())],
    })


def _register(experiments: ExperimentUseCases, log: obd.OBDLog) -> str:
    key = experiments.unique_key(f"obd-{log.campaign}-{log.policy}")
    experiments.create(_spec(key, log), actor=ACTOR)
    experiments.start(key, actor=ACTOR, reason="replay of a logged policy")
    return key


def _stream(producer: Any, key: str, log: obd.OBDLog, tick: Any,
            shift: timedelta = timedelta(0)) -> int:
    """Send one impression per row and one click feedback per clicked row; every timestamp is
    moved by ``shift`` (see :func:`replay_obd`)."""
    sent = 0
    for i in range(log.n):
        ts = log.timestamp[i] + shift
        imp_id = f"{key}-{i}"
        producer.send_impression(
            experiment_key=key, arm_key=obd.arm_key(int(log.item_id[i])),
            unit_id=f"{log.policy}-{i}", propensity=float(log.propensity[i]),
            impression_id=imp_id, event_id=f"{imp_id}-imp", served_at=ts,
            items=[int(log.item_id[i])],
            context={"position": int(log.position[i]), "campaign": log.campaign},
        )
        sent += 1
        if log.click[i]:
            producer.send_feedback(impression_id=imp_id, experiment_key=key, kind="click",
                                   value=1.0, event_id=f"{imp_id}-click",
                                   occurred_at=ts + timedelta(seconds=1))
            sent += 1
        tick(i)
    return sent


def _ingest(runner: Any, settings: Any) -> dict[str, int]:
    if settings.transport == "memory":
        return dict(runner.drain())
    return dict(runner.run(exit_when_idle=5.0))


def _load_logs(campaign: str, limit: int | None, settings: Any
               ) -> tuple[dict[str, obd.OBDLog], timedelta]:
    """Both logs, and the shift that moves them to end a minute ago.

    The logs are from November 2019: the consumers refuse events older than the retention
    horizon (ARMLAB_RETENTION_DAYS) as `expired`, so the replay moves the whole log forward to
    end a minute ago, keeping every gap between events (nothing here reads absolute dates)."""
    logs = {p: obd.load_log(p, campaign, base=settings.obd_dir, limit=limit)
            for p in obd.POLICIES}
    last = max((max(log.timestamp) for log in logs.values() if log.n), default=None)
    shift = (utcnow() - timedelta(minutes=1) - last) if last is not None else timedelta(0)
    return logs, shift


def _stream_all(producer: Any, keys: dict[str, str], logs: dict[str, obd.OBDLog],
                shift: timedelta, progress: bool) -> int:
    """:func:`_stream` every log into its experiment (with a progress bar when asked);
    returns the number of events sent."""
    sent = 0
    if progress:
        with Progress(transient=True) as bar:
            for p, log in logs.items():
                task = bar.add_task(f"streaming {keys[p]}", total=log.n)

                def tick(i: int, task: Any = task) -> None:
                    if i % 500 == 499:
                        bar.update(task, completed=i + 1)

                sent += _stream(producer, keys[p], log, tick, shift)
                bar.update(task, completed=log.n)
    else:
        for p, log in logs.items():
            sent += _stream(producer, keys[p], log, lambda i: None, shift)
    return sent


@dataclass(frozen=True)
class _Estimates:
    """What :func:`_evaluate` read back and estimated."""

    stored: dict[str, dict[str, int]]  # per log: impressions and clicks stored
    est: dict[str, ope.OPEEstimate]  # the BTS policy's click rate from the random log
    bts_logged: ope.OPEEstimate  # the click rate the BTS policy logged
    rnd_logged: ope.OPEEstimate  # the click rate the random policy logged


def _evaluate(services: Any, keys: dict[str, str], policy_estimate: str, alpha: float
              ) -> _Estimates:
    """Read both logs back from the impressions table and estimate the BTS policy's click
    rate from the random log, beside both logged click rates."""
    logged = {p: load_logged_by_key(services.uow, keys[p], attribution_window_s=3600,
                                    stratum_field="position", matured_only=False)
              for p in keys}
    stored = {p: {"impressions": d.n_total, "clicks": int(sum(d.rewards))}
              for p, d in logged.items()}
    rnd, bts = logged["random"], logged["bts"]
    assert bts.strata is not None and rnd.strata is not None
    target = obd.estimate_policy_from(bts.actions, bts.strata, bts.propensities,
                                      policy_estimate)
    click_range = (0.0, 1.0)  # binary rewards: every interval lies in [0, 1]
    est = ope.evaluate_policy(rnd.actions, rnd.rewards, rnd.propensities, {},
                              strata=rnd.strata, target_by_stratum=target, alpha=alpha,
                              reward_range=click_range)
    bts_logged = ope.on_policy_mean(bts.rewards, alpha=alpha, reward_range=click_range)
    rnd_logged = ope.on_policy_mean(rnd.rewards, alpha=alpha, reward_range=click_range)
    return _Estimates(stored=stored, est=est, bts_logged=bts_logged, rnd_logged=rnd_logged)


def _summary(*, campaign: str, stack: str, keys: dict[str, str],
             logs: dict[str, obd.OBDLog], sent: int, counts: dict[str, int], ingest_s: float,
             policy_estimate: str, alpha: float, ev: _Estimates) -> dict[str, Any]:
    """The JSON-able summary :func:`replay_obd` returns (``ev``: :func:`_evaluate`)."""
    return {
        "campaign": campaign,
        "stack": stack,
        "experiments": keys,
        "csv": {p: {"rows": log.n, "clicks": log.clicks, "items": log.n_items}
                for p, log in logs.items()},
        "ingested": ev.stored,
        "events_sent": sent,
        "ingest_outcomes": counts,
        "ingest_seconds": round(ingest_s, 2),
        "policy_estimate": policy_estimate,
        "mapping": "arm = item-<item_id>; position in impression context; propensity = "
                   "propensity_score = P(item at position | position)",
        "target": "ZOZOTOWN Bernoulli-TS, action distribution per position estimated "
                  f"from its own log ({policy_estimate})",
        "ope_from_random_log": {k: v.as_dict() for k, v in ev.est.items()},
        "bts_logged_ctr": ev.bts_logged.as_dict(),
        "random_logged_ctr": ev.rnd_logged.as_dict(),
        "alpha": alpha,
        "caveat": CAVEAT,
    }


def _stop_all(services: Any, keys: dict[str, str], ev: _Estimates) -> None:
    """Stop both experiments with the evaluation as the audit log's evidence."""
    evidence = {
        "ope_bts_from_random": {k: {"value": v.value, "ci": [v.ci_low, v.ci_high],
                                    "n_weighted": v.n_weighted} for k, v in ev.est.items()},
        "bts_logged_ctr": ev.bts_logged.value,
    }
    for p in keys:
        services.experiments.stop(keys[p], actor=ACTOR, reason="replay finished",
                                  evidence=evidence)


def replay_obd(
    *,
    campaign: str = "all",
    stack: str = "embedded",
    limit: int | None = None,
    policy_estimate: str = "propensity",
    alpha: float = 0.05,
    progress: bool = True,
    settings: Any = None,
) -> dict[str, Any]:
    """Run the replay and the evaluation; returns a JSON-able summary."""
    obd._check("campaign", campaign, obd.CAMPAIGNS)
    obd._check("policy_estimate", policy_estimate, obd.POLICY_ESTIMATES)
    settings = settings or make_settings(stack)
    logs, shift = _load_logs(campaign, limit, settings)
    services = open_services(settings)
    t0 = time.perf_counter()
    try:
        producer = services.producer
        runner = services.ingest_runner()
        keys = {p: _register(services.experiments, log) for p, log in logs.items()}
        counts: dict[str, int] = {}
        sent = _stream_all(producer, keys, logs, shift, progress)
        producer.flush()
        for k, v in _ingest(runner, settings).items():
            counts[k] = counts.get(k, 0) + int(v)
        runner.close()
        ingest_s = time.perf_counter() - t0
        ev = _evaluate(services, keys, policy_estimate, alpha)
        result = _summary(campaign=campaign, stack=stack, keys=keys, logs=logs, sent=sent,
                          counts=counts, ingest_s=ingest_s, policy_estimate=policy_estimate,
                          alpha=alpha, ev=ev)
        _stop_all(services, keys, ev)
        return result
    finally:
        services.close()


def print_replay(result: dict[str, Any]) -> None:
    """Human-readable summary with rich."""
    con = Console()
    a = result["alpha"]
    pct = f"{round((1 - a) * 100)}%"
    t = Table(title="Ingested through the producer SDK and the consumers")
    for col in ("log", "experiment", "CSV rows", "CSV clicks", "stored rows", "stored clicks"):
        t.add_column(col, justify="left" if col in ("log", "experiment") else "right")
    for p in ("random", "bts"):
        c, s = result["csv"][p], result["ingested"][p]
        t.add_row(p, result["experiments"][p], str(c["rows"]), str(c["clicks"]),
                  str(s["impressions"]), str(s["clicks"]))
    con.print(t)
    con.print(f"ingest outcomes: {result['ingest_outcomes']} in {result['ingest_seconds']} s")

    t2 = Table(title=f"Click rate of ZOZOTOWN's Bernoulli-TS policy ({result['campaign']}), "
                     "per (impression, position)")
    for col in ("estimate", "CTR", f"{pct} CI", f"{pct} CS", "events used", "ESS"):
        t2.add_column(col, justify="left" if col == "estimate" else "right")
    for name, e in result["ope_from_random_log"].items():
        t2.add_row(f"{name.upper()} from random log", f"{e['value']:.5f}",
                   f"[{e['ci_low']:.5f}, {e['ci_high']:.5f}]",
                   f"[{e['cs_low']:.5f}, {e['cs_high']:.5f}]",
                   f"{e['n_weighted']}/{e['n_events']}", f"{e['ess']:.0f}")
    b = result["bts_logged_ctr"]
    t2.add_row("BTS logged (on-policy)", f"{b['value']:.5f}",
               f"[{b['ci_low']:.5f}, {b['ci_high']:.5f}]", "", str(b["n_events"]), "")
    r = result["random_logged_ctr"]
    t2.add_row("random logged (reference)", f"{r['value']:.5f}",
               f"[{r['ci_low']:.5f}, {r['ci_high']:.5f}]", "", str(r["n_events"]), "")
    con.print(t2)
    con.print(f"CS = always-valid confidence sequence; ESS = effective sample size of the "
              f"importance weights.\ntarget policy: {result['target']}")
    con.print(f"mapping: {result['mapping']}")
    con.print(f"[bold yellow]caveat:[/] {result['caveat']}")
