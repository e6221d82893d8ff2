"""A small typed client for the armlab registry API (used by the admin CLI and scripts).

Every failure becomes an :class:`~armlab.errors.ArmlabError` with a one-line message: an HTTP
error carries the API's ``detail``; a refused or timed-out connection says which URL could not
be reached.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from armlab.errors import ArmlabError, ServiceUnavailable


class ApiError(ArmlabError):
    """The API answered with an error status; ``message`` is its ``detail``."""

    def __init__(self, status: int, title: str, detail: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class ArmlabClient:
    """``ArmlabClient(url, token)``; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        """``http`` reuses an existing client (tests pass FastAPI's TestClient)."""
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._http = http or httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport
        )
        self._owns_http = http is None

    def __enter__(self) -> ArmlabClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # --- plumbing -----------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            headers = {**self._headers, **kwargs.pop("headers", {})}
            resp = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.ConnectError as exc:
            raise ServiceUnavailable(
                f"cannot reach the armlab API at {self.base_url}: {_one_line(str(exc), 200)} "
                "(is `armlab serve` running? set ARMLAB_API_URL)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(
                f"the armlab API at {self.base_url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"cannot talk to the armlab API at {self.base_url}: {_one_line(str(exc), 200)}"
            ) from exc
        if resp.status_code >= 400:
            body: Any
            try:
                body = resp.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                title = str(body.get("title") or resp.reason_phrase)
                detail = str(body.get("detail") or title)
            else:
                title = resp.reason_phrase
                detail = resp.text or title
            raise ApiError(resp.status_code, _one_line(title, 100), _one_line(detail), body)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # --- registry -----------------------------------------------------------------------

    def create_experiment(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/experiments", json=spec)

    def list_experiments(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        return self.request("GET", "/v1/experiments", params=params)["experiments"]

    def get_experiment(self, key: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/experiments/{quote(key, safe='')}")

    def start(self, key: str, reason: str = "") -> dict[str, Any]:
        return self.request(
            "POST", f"/v1/experiments/{quote(key, safe='')}/start", json={"reason": reason}
        )

    def stop(self, key: str, reason: str) -> dict[str, Any]:
        return self.request(
            "POST", f"/v1/experiments/{quote(key, safe='')}/stop", json={"reason": reason}
        )

    def ship(self, key: str, arm: str, reason: str, force: bool = False) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/v1/experiments/{quote(key, safe='')}/ship",
            json={"arm": arm, "reason": reason, "force": force},
        )

    def results(self, key: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/experiments/{quote(key, safe='')}/results")

    def audit(self, key: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/v1/experiments/{quote(key, safe='')}/audit")["entries"]
