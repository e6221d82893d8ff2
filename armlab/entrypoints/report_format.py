"""The HTML report's cell formatting, shared by its sections (A/B, interleaving, contextual)."""

from __future__ import annotations

import html
from typing import Any


def esc(v: Any) -> str:
    """HTML-escaped text of ``v`` (empty for None)."""
    return html.escape("" if v is None else str(v))


def fmt(v: Any, digits: int = 4) -> str:
    """A number to ``digits`` decimals, "—" for None, anything else as text."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)
