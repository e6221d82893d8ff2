"""What both demo stages share: reading an API answer or failing with one readable line."""

from __future__ import annotations

from typing import Any

from armlab.errors import ConfigurationError


def check(resp: Any, what: str) -> dict[str, Any]:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except Exception:  # noqa: BLE001
            detail = resp.text[:300]
        raise ConfigurationError(f"{what} failed ({resp.status_code}): {detail}")
    return dict(resp.json())
