"""Item files (JSONL or CSV) for catalogs and ``armlab score``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from armlab.core.catalog import normalise_items
from armlab.errors import ValidationFailed


def read_items_file(path: str | Path) -> list[dict[str, Any]]:
    """Items from JSONL (one object per line) or CSV (header row); each needs ``id``."""
    p = Path(path)
    if not p.is_file():
        raise ValidationFailed(f"items file not found: {p}", field="file")
    items: list[dict[str, Any]] = []
    if p.suffix.lower() == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            items = [dict(row) for row in csv.DictReader(fh)]
    else:
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValidationFailed(f"{p}:{n}: not JSON ({exc.msg})", field="file") from None
                if not isinstance(obj, dict):
                    raise ValidationFailed(f"{p}:{n}: expected a JSON object", field="file")
                items.append(obj)
    return normalise_items(items, source=str(p))
