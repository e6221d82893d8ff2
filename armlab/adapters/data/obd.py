"""The Open Bandit Dataset sample (Saito, Aihara, Matsutani & Narita, arXiv:2008.07146, 2020).

ZOZOTOWN, a fashion e-commerce site, showed three items (positions 1-3) per impression and
logged every (impression, position) pair with the item shown, whether it was clicked, and the
probability with which the logging policy put that item in that position. Two logging
policies ran side by side on the same traffic: a uniform-random one (``random``) and
Bernoulli Thompson sampling (``bts``). The sample shipped in the obp sdist (copied to
``shared/data/obd``) has 10,000 rows per (policy, campaign); campaigns ``all`` (80 items),
``men`` (34) and ``women`` (46). CC BY 4.0, ZOZO Research; cite the paper above.

Mapping onto armlab's event model (used by :mod:`armlab.entrypoints.demo.obd_replay`):

- one row = one impression; ``arm = "item-<item_id>"``; the row's position is the stratum and
  travels in the impression context (``{"position": k}``); ``propensity = propensity_score``,
  which OBD defines as P(item shown at position k | position k) under the logging policy;
- a click = a ``click`` feedback event (value 1) for that impression.

So each position is a separate context-free decision over the campaign's items, which is how
the obp authors evaluate policies on this data too (action and position, ``len_list = 3``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from armlab.errors import ConfigurationError, ValidationFailed

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
POLICY_ESTIMATES = ("propensity", "empirical")


@dataclass(frozen=True)
class OBDLog:
    """One logging policy's rows for one campaign, in time order."""

    policy: str
    campaign: str
    timestamp: list[datetime]
    item_id: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]
    click: npt.NDArray[np.int64]
    propensity: npt.NDArray[np.float64]
    n_items: int
    path: Path

    @property
    def n(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def clicks(self) -> int:
        return int(self.click.sum())

    @property
    def ctr(self) -> float:
        return float(self.click.mean()) if self.n else 0.0

    def arms(self) -> list[str]:
        return [arm_key(i) for i in range(self.n_items)]


def arm_key(item_id: int) -> str:
    return f"item-{int(item_id)}"


def obd_candidates(configured: str | Path | None = None) -> list[Path]:
    """Where the sample is looked for, in order: the ARMLAB_OBD_DIR setting, then
    ``shared/data/obd`` and ``../shared/data/obd`` below the working directory (a checkout
    with ``shared/`` inside or beside it). Never relative to where armlab is installed."""
    cwd = Path.cwd()
    out: list[Path] = []
    if configured:
        out.append(Path(configured).expanduser())
    out += [cwd / "shared" / "data" / "obd", cwd.parent / "shared" / "data" / "obd"]
    return out


def locate_obd(configured: str | Path | None = None) -> Path:
    """The directory holding ``random/`` and ``bts/``, or a ConfigurationError naming the
    places that were tried. An explicitly configured directory is never second-guessed."""
    if configured:
        cand = Path(configured).expanduser()
        if (cand / "random").is_dir() and (cand / "bts").is_dir():
            return cand
        raise ConfigurationError(
            f"Open Bandit Dataset not found in ARMLAB_OBD_DIR={configured} "
            "(expected random/ and bts/ folders from the obp sdist's obp/dataset/obd)"
        )
    tried = obd_candidates()
    for cand in tried:
        if (cand / "random").is_dir() and (cand / "bts").is_dir():
            return cand
    raise ConfigurationError(
        "Open Bandit Dataset sample not found; tried "
        + ", ".join(str(p) for p in tried)
        + ". Set ARMLAB_OBD_DIR to a folder with random/ and bts/ (copied from the obp "
        "sdist's obp/dataset/obd)."
    )


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValidationFailed(
            f"{name} must be one of {', '.join(allowed)}, got {value!r}", field=name
        )


def load_log(
    policy: str, campaign: str = "all", *, base: str | Path | None = None, limit: int | None = None
) -> OBDLog:
    """Read one log (``policy`` random|bts, ``campaign`` all|men|women), sorted by time.

    ``base``: the sample's directory (callers pass ``settings.obd_dir``); None searches the
    default places (:func:`obd_candidates`)."""
    _check("policy", policy, POLICIES)
    _check("campaign", campaign, CAMPAIGNS)
    root = locate_obd(base)
    folder = root / policy / campaign
    data = folder / f"{campaign}.csv"
    items = folder / "item_context.csv"
    if not data.is_file() or not items.is_file():
        raise ConfigurationError(f"OBD files missing: expected {data} and {items}")
    with items.open(encoding="utf-8", newline="") as fh:
        n_items = sum(1 for _ in csv.DictReader(fh))
    ts: list[datetime] = []
    item: list[int] = []
    pos: list[int] = []
    click: list[int] = []
    prop: list[float] = []
    with data.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            ts.append(datetime.fromisoformat(row["timestamp"]))
            item.append(int(row["item_id"]))
            pos.append(int(row["position"]))
            click.append(int(row["click"]))
            prop.append(float(row["propensity_score"]))
    order = sorted(range(len(ts)), key=ts.__getitem__)
    if limit is not None:
        order = order[:limit]
    return OBDLog(
        policy=policy,
        campaign=campaign,
        timestamp=[ts[i] for i in order],
        item_id=np.array([item[i] for i in order], dtype=np.int64),
        position=np.array([pos[i] for i in order], dtype=np.int64),
        click=np.array([click[i] for i in order], dtype=np.int64),
        propensity=np.array([prop[i] for i in order], dtype=np.float64),
        n_items=n_items,
        path=folder,
    )


def estimate_policy(log: OBDLog, method: str = "propensity") -> dict[str, dict[str, float]]:
    """The logging policy's average action distribution per position, from its own log.

    See :func:`estimate_policy_from`; this is the same on an :class:`OBDLog`.
    """
    return estimate_policy_from(
        [arm_key(a) for a in log.item_id], [str(int(k)) for k in log.position],
        [float(p) for p in log.propensity], method,
    )


def estimate_policy_from(
    arms: Sequence[str], positions: Sequence[str], propensities: Sequence[float],
    method: str = "propensity",
) -> dict[str, dict[str, float]]:
    """A logging policy's time-averaged action distribution per position, from its log.

    OBD does not publish the Bernoulli-TS policy's full action probabilities, only the
    propensity of the item it actually showed. Its posterior changed over the week, so the
    quantity to evaluate is the time-averaged distribution ``pibar(a|k) = mean_t pi_t(a|k)``.

    - ``empirical``: ``n(a, k) / n(k)``, the share of position-k rows showing item a. Unbiased
      for pibar but noisy with ~40 rows per (item, position) in this sample.
    - ``propensity`` (default): per (item, position), the harmonic mean of the logged
      propensities of the rows that showed it, ``n(a,k) / sum_{rows} 1/pi_t(a|k)``, then
      normalised over items per position. Rows are drawn with probability pi_t(a|k), so
      ``sum 1/pi_t`` estimates the number of decisions (Horvitz-Thompson) and the ratio
      estimates pibar; when the policy is stable it returns the logged propensity exactly,
      with far less noise than counting. Items never shown at a position get 0.
    """
    _check("method", method, POLICY_ESTIMATES)
    if not (len(arms) == len(positions) == len(propensities)):
        raise ValidationFailed("arms, positions and propensities must have the same length",
                               field="log")
    cnt: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    inv: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for a, k, p in zip(arms, positions, propensities, strict=True):
        if not p > 0:
            raise ValidationFailed(f"propensity must be > 0, got {p}", field="propensity")
        cnt[k][a] += 1.0
        inv[k][a] += 1.0 / float(p)
    out: dict[str, dict[str, float]] = {}
    for k in sorted(cnt):
        raw = dict(cnt[k]) if method == "empirical" else {a: cnt[k][a] / inv[k][a]
                                                          for a in cnt[k]}
        total = sum(raw.values())
        out[k] = {a: v / total for a, v in sorted(raw.items())}
    return out


#: The user features of the sample (hashed categorical values, 3 to 9 levels each).
USER_FEATURES = ("user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3")


def load_user_contexts(policy: str, campaign: str = "all", *, base: str | Path | None = None,
                       limit: int | None = None) -> list[dict[str, str]]:
    """The user features of every row of :func:`load_log`'s log, in the same (time) order:
    ``{"user_feature_0": "<hash>", ...}`` per row."""
    _check("policy", policy, POLICIES)
    _check("campaign", campaign, CAMPAIGNS)
    data = locate_obd(base) / policy / campaign / f"{campaign}.csv"
    if not data.is_file():
        raise ConfigurationError(f"OBD file missing: expected {data}")
    ts: list[datetime] = []
    ctx: list[dict[str, str]] = []
    with data.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            ts.append(datetime.fromisoformat(row["timestamp"]))
            ctx.append({f: row[f] for f in USER_FEATURES})
    order = sorted(range(len(ts)), key=ts.__getitem__)
    if limit is not None:
        order = order[:limit]
    return [ctx[i] for i in order]
