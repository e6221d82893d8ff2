"""``armlab stats msprt`` (reference interface for scripts) and ``armlab simulate sequential``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from armlab.errors import StatsError


def run_msprt_cases(cases: Any) -> list[dict[str, Any]]:
    """Evaluate the JSON cases of ``armlab stats msprt`` (see the command's help)."""
    from armlab.core.stats.msprt import MsprtState, msprt_two_sample

    if not isinstance(cases, list):
        raise StatsError("input must be a JSON list of cases")
    out: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise StatsError(f"case {i}: must be an object")
        try:
            alpha = float(case.get("alpha", 0.05))
            tau2 = float(case["tau2"])
            theta0 = float(case.get("theta0", 0.0))
            kind = str(case.get("kind", "bernoulli"))
            checkpoints = case["checkpoints"]
        except KeyError as exc:
            raise StatsError(f"case {i}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise StatsError(f"case {i}: {exc}") from exc
        if kind not in ("bernoulli", "normal"):
            raise StatsError(f"case {i}: kind must be 'bernoulli' or 'normal', got {kind!r}")
        if not isinstance(checkpoints, list):
            raise StatsError(f"case {i}: checkpoints must be a list")
        state = MsprtState()
        rows = []
        for j, cp in enumerate(checkpoints):
            where = f"case {i} checkpoint {j}"
            try:
                args = [
                    float(cp["n_a"]), float(cp["sum_a"]),
                    None if cp.get("sumsq_a") is None else float(cp["sumsq_a"]),
                    float(cp["n_b"]), float(cp["sum_b"]),
                    None if cp.get("sumsq_b") is None else float(cp["sumsq_b"]),
                ]
            except KeyError as exc:
                raise StatsError(f"{where}: missing field {exc.args[0]!r}") from exc
            except (TypeError, ValueError) as exc:
                raise StatsError(f"{where}: {exc}") from exc
            try:
                res = msprt_two_sample(kind, *args, tau2=tau2, theta0=theta0,  # type: ignore[arg-type]
                                       alpha=alpha, state=state)
            except StatsError as exc:
                raise StatsError(f"{where}: {exc.message}") from exc
            state = res.state
            rows.append({
                "lambda": res.lambda_ if math.isfinite(res.lambda_) else None,
                "log_lambda": res.log_lambda,
                "p_value": res.p_value,
                "ci_low": None if math.isinf(res.ci_low) else res.ci_low,
                "ci_high": None if math.isinf(res.ci_high) else res.ci_high,
            })
        out.append({"case": i, "checkpoints": rows})
    return out


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    stats_app = typer.Typer(help="Sequential statistics (mSPRT).", no_args_is_help=True)
    app.add_typer(stats_app, name="stats")

    @stats_app.command("msprt")
    def msprt_cmd(
        input: Path = typer.Option(..., "--input", help="JSON file with a list of cases."),  # noqa: A002
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """mSPRT of Johari et al. (2022) on cumulative checkpoints.

        Each case: {"alpha", "tau2", "theta0", "kind": "bernoulli"|"normal", "checkpoints":
        [{"n_a","sum_a","sumsq_a","n_b","sum_b","sumsq_b"}, ...]} (a = control, b =
        treatment; sumsq optional for bernoulli). Prints per case and checkpoint the running
        (always-valid) {"lambda","p_value","ci_low","ci_high"}; null bounds mean unbounded.
        """
        try:
            cases = json.loads(input.read_text())
        except OSError as exc:
            raise StatsError(f"cannot read --input {str(input)!r}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise StatsError(f"--input {str(input)!r} is not valid JSON: {exc}") from exc
        result = run_msprt_cases(cases)
        if as_json:
            typer.echo(json.dumps(result))
            return
        for case in result:
            typer.echo(f"case {case['case']}")
            for j, r in enumerate(case["checkpoints"]):
                lo = "-inf" if r["ci_low"] is None else f"{r['ci_low']:.6g}"
                hi = "inf" if r["ci_high"] is None else f"{r['ci_high']:.6g}"
                lam = "inf" if r["lambda"] is None else f"{r['lambda']:.6g}"
                typer.echo(f"  {j}: lambda={lam} p={r['p_value']:.6g} ci=[{lo}, {hi}]")
