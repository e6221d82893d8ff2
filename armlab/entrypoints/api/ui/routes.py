"""The dashboard's pages and forms under ``/ui`` (server-rendered Jinja2, htmx, uPlot).

Reads go through :class:`armlab.services.dashboard.DashboardReads`; every action goes through
the same use case as the API (:class:`armlab.services.experiments.ExperimentUseCases`), and so
writes the same audit row. Roles are the API's (:mod:`armlab.entrypoints.api.auth`): any
signed-in token sees, only ``admin`` acts; checked here on the server for every POST, after
the CSRF token.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import yaml
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from armlab.bootstrap import Services
from armlab.core.clock import as_utc
from armlab.core.specs import ExperimentSpec
from armlab.core.status import ExperimentStatus
from armlab.entrypoints.api.auth import Authenticator
from armlab.entrypoints.api.errors import _field_name as field_name
from armlab.entrypoints.api.throttle import address_key, name_key
from armlab.entrypoints.api.ui.session import Session, SessionManager
from armlab.errors import ArmlabError, Conflict, Forbidden, PolicyError
from armlab.services import dashboard

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATUSES = tuple(s.value for s in ExperimentStatus)
DONE = {
    "create": "Experiment registered (draft).",
    "start": "Experiment started.",
    "stop": "Experiment stopped; the control serves from now on.",
    "ship": "Arm shipped; it gets all traffic from now on.",
}


class LoginRequired(Exception):  # noqa: N818 - control flow: a redirect to the sign-in page
    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageError(Exception):
    """An error page (HTML) with a status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- templates --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _when(value: datetime | None) -> str:
    return "—" if value is None else as_utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(max(seconds, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _make_templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=_fmt, when=_when, age=_age, pretty=_pretty,
                       urlkey=lambda k: quote(str(k), safe=""))
    return Jinja2Templates(env=env)


TEMPLATES = _make_templates()


def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
           session: Session | None = None) -> Response:
    ctx = {"session": session, "statuses": STATUSES, **context}
    return TEMPLATES.TemplateResponse(request, name, ctx, status_code=status)


# --- dependencies -----------------------------------------------------------------------------


def _services(request: Request) -> Services:
    return request.app.state.services


def _auth(request: Request) -> Authenticator:
    return request.app.state.authenticator


def _sessions(request: Request) -> SessionManager:
    return request.app.state.ui_sessions


def viewer(request: Request) -> Session:
    """The signed-in session of a page view; otherwise a redirect to the sign-in page."""
    session = _sessions(request).read(request, _auth(request))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return session


async def actor(request: Request) -> Session:
    """The session of a state-changing form: signed in, a valid CSRF token, role admin."""
    session = _sessions(request).read(request, _auth(request))
    if session is None:
        raise PageError(403, "Not signed in: sign in with an admin token to act.")
    form = await request.form()
    presented = form.get("csrf")
    if not SessionManager.csrf_ok(session, presented if isinstance(presented, str) else None):
        raise PageError(403, "Missing or invalid CSRF token: reload the page and try again.")
    try:
        _auth(request).require(session.principal, "admin")
    except Forbidden as exc:
        raise PageError(403, exc.message) from exc
    return session


def _safe_next(url: str | None) -> str:
    """Only same-site dashboard paths (no open redirect)."""
    if url and url.startswith("/ui") and not url.startswith("//") and "\\" not in url:
        return url
    return "/ui/experiments"


def _interval(request: Request) -> float:
    return float(_services(request).settings.allocator_interval_s)


router = APIRouter(prefix="/ui", include_in_schema=False)


# --- sign-in ----------------------------------------------------------------------------------


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/ui/experiments", status_code=303)


def _login_page(request: Request, next_url: str, error: str = "", status: int = 200,
                name: str = "") -> Response:
    nonce, token = _sessions(request).login_token(request)
    response = render(request, "login.html", {"next": _safe_next(next_url), "error": error,
                                              "disabled": _auth(request).disabled,
                                              "csrf": token, "name": name}, status)
    _sessions(request).set_login_cookie(response, nonce)
    return response


@router.get("/login")
def login_form(request: Request, next: str = Query("/ui/experiments")) -> Response:  # noqa: A002
    return _login_page(request, next)


@router.post("/login")
def login(
    request: Request,
    token: str = Form(""),
    name: str = Form(""),
    csrf: str = Form(""),
    next: str = Form("/ui/experiments"),  # noqa: A002
) -> Response:
    """Sign in with a token (and optionally its name). Failures are throttled per client
    address and per name typed (:mod:`armlab.entrypoints.api.throttle`): past the free ones,
    the form answers 429 with ``Retry-After`` without looking at the token."""
    sessions = _sessions(request)
    if not sessions.login_ok(request, csrf):
        raise PageError(403, "Missing or invalid CSRF token on the sign-in form: reload it.")
    auth = _auth(request)
    secret = token.strip()
    if auth.disabled:
        principal = auth.authenticate(None)
    else:
        name = name.strip()[:200]
        keys = (address_key(request.client.host if request.client else None), name_key(name))
        wait = auth.throttle.retry_after(keys)
        if wait > 0:
            response = _login_page(
                request, next, f"Too many failed sign-ins from here or for this name: try "
                f"again in {math.ceil(wait)} s.", 429, name)
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        found = auth.lookup(secret.encode()) if secret else None
        if found is None or (name and found.name != name):
            if secret:
                auth.throttle.failed(keys)
            return _login_page(request, next, "That token is not valid.", 401, name)
        auth.throttle.succeeded(name_key(found.name))
        principal = found
    response = RedirectResponse(_safe_next(next), status_code=303)
    sessions.start(response, principal, secret.encode())
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (CSRF-checked like every form, but any role may sign out): its id is
    refused from now on, whoever holds a copy of the cookie."""
    session = _sessions(request).read(request, _auth(request))
    form = await request.form()
    presented = form.get("csrf")
    if session is not None and not SessionManager.csrf_ok(
            session, presented if isinstance(presented, str) else None):
        raise PageError(403, "Missing or invalid CSRF token: reload the page and try again.")
    response = RedirectResponse("/ui/login", status_code=303)
    _sessions(request).end(request, response, session)
    return response


# --- reads ------------------------------------------------------------------------------------


@router.get("/experiments")
def experiments(
    request: Request,
    status: str = Query(""),
    q: str = Query("", max_length=200),
    session: Session = Depends(viewer),
) -> Response:
    if status and status not in STATUSES:
        raise PageError(422, f"status must be one of {', '.join(STATUSES)}")
    rows = _services(request).dashboard.list_rows(status=status or None, query=q,
                                                  allocator_interval_s=_interval(request))
    return render(request, "list.html", {"rows": rows, "status": status, "q": q},
                  session=session)


def _source(session: Session, source: str) -> str:
    if source not in dashboard.SOURCES:
        raise PageError(422, f"source must be one of {', '.join(dashboard.SOURCES)}")
    if source == "raw" and not session.is_admin:
        raise PageError(403, "source=raw scans the impressions table: admin only")
    return source


def _view(request: Request, key: str, source: str = "rollups") -> dict[str, Any]:
    try:
        return _services(request).dashboard.experiment_view(
            key, allocator_interval_s=_interval(request), source=source)
    except ArmlabError as exc:
        raise PageError(exc.status, exc.message) from exc


def _experiment_page(request: Request, session: Session, key: str, *, source: str = "rollups",
                     status: int = 200, **extra: Any) -> Response:
    view = _view(request, key, source)
    done = request.query_params.get("done", "")
    return render(request, "experiment.html",
                  {"v": view, "source": source, "done": DONE.get(done, ""), **extra},
                  status, session=session)


@router.get("/experiments/new")
def new_experiment(request: Request, session: Session = Depends(viewer)) -> Response:
    if not session.is_admin:
        raise PageError(403, f"token {session.principal.name!r} has role "
                             f"{session.principal.role!r}; registering needs role 'admin'")
    return render(request, "new.html", {"text": EXAMPLE_SPEC, "errors": []}, session=session)


@router.get("/experiments/{key}")
def experiment(request: Request, key: str, source: str = Query("rollups"),
               session: Session = Depends(viewer)) -> Response:
    return _experiment_page(request, session, key, source=_source(session, source))


@router.get("/experiments/{key}/live")
def experiment_live(request: Request, key: str, source: str = Query("rollups"),
                    session: Session = Depends(viewer)) -> Response:
    view = _view(request, key, _source(session, source))
    return render(request, "_live.html", {"v": view}, session=session)


@router.get("/experiments/{key}/charts.json")
def experiment_charts(request: Request, key: str, source: str = Query("rollups"),
                      session: Session = Depends(viewer)) -> Response:
    try:
        data = _services(request).dashboard.chart_data(key, source=_source(session, source))
    except ArmlabError as exc:
        raise PageError(exc.status, exc.message) from exc
    return Response(orjson.dumps(data), media_type="application/json",
                    headers={"Cache-Control": "no-store"})


# --- actions ----------------------------------------------------------------------------------

EXAMPLE_SPEC = """\
key: my-experiment
name: My experiment
unit: request
reward: {kind: binary, metric: click}
policy: {name: thompson}
exploration_floor: 0.02
arms:
  - {key: control, control: true, variant: {kind: popularity}}
  - {key: treatment, variant: {kind: popularity}}
"""


def spec_errors(text: str) -> tuple[ExperimentSpec | None, list[dict[str, str]]]:
    """Parse a JSON or YAML spec; the errors name the field as the API's 422 does."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [{"field": "body", "message": f"not valid JSON or YAML: {exc}"}]
    if not isinstance(data, dict):
        return None, [{"field": "body", "message": "the spec must be a mapping (JSON object)"}]
    try:
        return ExperimentSpec.model_validate(data), []
    except ValidationError as exc:
        return None, [{"field": field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
                      for e in exc.errors()]


@router.post("/experiments")
def create(request: Request, spec: str = Form(""), session: Session = Depends(actor)) -> Response:
    parsed, errors = spec_errors(spec)
    if parsed is not None:
        try:
            _services(request).experiments.create(parsed, actor=session.principal.name)
            return RedirectResponse(f"/ui/experiments/{quote(parsed.key, safe='')}?done=create",
                                    status_code=303)
        except PolicyError as exc:
            errors = [{"field": f, "message": m} for f, m in exc.errors] or \
                [{"field": "policy", "message": exc.message}]
        except ArmlabError as exc:
            errors = [{"field": getattr(exc, "field", None) or "body", "message": exc.message}]
            if exc.status != 422:
                return render(request, "new.html", {"text": spec, "errors": errors},
                              exc.status, session=session)
    return render(request, "new.html", {"text": spec, "errors": errors}, 422, session=session)


def _act(request: Request, session: Session, key: str, action: str, fn: Any,
         form: dict[str, Any]) -> Response:
    try:
        fn(_services(request).experiments)
    except Conflict as exc:
        return _experiment_page(request, session, key, status=exc.status,
                                error=exc.message, failed=action, form=form)
    except ArmlabError as exc:
        return _experiment_page(request, session, key, status=exc.status, error=exc.message,
                                failed=action, form=form)
    return RedirectResponse(f"/ui/experiments/{quote(key, safe='')}?done={action}",
                            status_code=303)


@router.post("/experiments/{key}/start")
def start(request: Request, key: str, reason: str = Form("", max_length=2000),
          session: Session = Depends(actor)) -> Response:
    return _act(request, session, key, "start", lambda use: use.start(
        key, actor=session.principal.name, reason=reason), {"reason": reason})


@router.post("/experiments/{key}/stop")
def stop(request: Request, key: str, reason: str = Form("", max_length=2000),
         session: Session = Depends(actor)) -> Response:
    if not reason.strip():
        return _experiment_page(request, session, key, status=422, failed="stop",
                                error="reason: a stop needs a reason", form={})
    return _act(request, session, key, "stop", lambda use: use.stop(
        key, actor=session.principal.name, reason=reason.strip()), {"reason": reason})


@router.post("/experiments/{key}/ship")
def ship(request: Request, key: str, arm: str = Form(""), reason: str = Form("", max_length=2000),
         force: str = Form(""), session: Session = Depends(actor)) -> Response:
    form = {"arm": arm, "reason": reason, "force": bool(force)}
    if not reason.strip() or not arm:
        return _experiment_page(request, session, key, status=422, failed="ship", form=form,
                                error="arm and reason: a ship needs an arm and a reason")
    return _act(request, session, key, "ship", lambda use: use.ship(
        key, arm=arm, actor=session.principal.name, reason=reason.strip(),
        force=bool(force)), form)
