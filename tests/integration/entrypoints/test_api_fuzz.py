"""Schema-driven fuzzing of the whole API (schemathesis on /openapi.json): the document tells
the truth.

Every operation of the OpenAPI document gets generated requests as an admin, as a reader and
anonymously (no token), against PostgreSQL with experiments seeded in every status, so keyed
routes see both unknown keys (404) and real ones in each state. Every response must be no 5xx,
have a status code the operation documents, the content type it documents for that status,
and a body matching its schema (the error body's too). Bounded so the whole file runs in
about a minute.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.api.app import create_app
from armlab.services import registry
from armlab.settings import Settings

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer reader-secret"}
ANONYMOUS: dict[str, str] = {}
#: Generated examples per operation for each caller (admin, reader, anonymous); the full-length
#: run (``make fuzz-api``) multiplies them by ARMLAB_API_FUZZ_SCALE.
SCALE = max(1, int(os.environ.get("ARMLAB_API_FUZZ_SCALE", "1")))
EXAMPLES = {"admin": 10 * SCALE, "reader": 4 * SCALE, "anonymous": 3 * SCALE}
CALLS: collections.Counter[int] = collections.Counter()  # responses by status, for the report
SEEDED = ("fz-draft", "fz-running", "fz-stopped", "fz-shipped")
_keys = itertools.cycle(SEEDED)


def _seed(url: str) -> None:
    engine = make_engine(url)
    sf = make_session_factory(engine)
    try:
        for key in SEEDED:
            spec = ExperimentSpec.model_validate({
                "key": key,
                "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                         {"key": "alt", "variant": {"kind": "popularity"}}],
            })
            with UnitOfWork(sf) as uow:
                registry.create_experiment(uow, spec=spec, actor="seed")
                if key != "fz-draft":
                    registry.start_experiment(uow, key=key, actor="seed")
                if key == "fz-stopped":
                    registry.stop_experiment(uow, key=key, actor="seed", reason="seed")
                if key == "fz-shipped":
                    registry.ship_experiment(uow, key=key, arm="alt", actor="seed", reason="seed")
                uow.commit()
    finally:
        engine.dispose()


@pytest.fixture()
def api_schema(pg_url: str) -> Iterator[Any]:
    _seed(pg_url)
    app = create_app(Settings(database_url=pg_url, transport="memory", auth_disabled=False,
                              auth_tokens="ops:admin:admin-secret,ro:reader:reader-secret"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    yield schema
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _fuzz_operation(operation: Any, headers: dict[str, str], max_examples: int) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        CALLS[case.call_and_validate(headers=headers, checks=CHECKS).status_code] += 1
        if case.path_parameters and "key" in case.path_parameters:
            # the same request against a real experiment: draft/running/stopped/shipped in turn
            case.path_parameters = {**case.path_parameters, "key": next(_keys)}
            CALLS[case.call_and_validate(headers=headers, checks=CHECKS).status_code] += 1

    run()


def test_every_response_matches_the_openapi_document(api_schema: Any) -> None:
    operations = [r.ok() for r in api_schema.get_all_operations()]
    labels = [f"{op.method.upper()} {op.path}" for op in operations]
    assert "POST /v1/experiments" in labels and "GET /readyz" in labels, labels
    failures: dict[str, str] = {}
    callers = {"admin": ADMIN, "reader": READER, "anonymous": ANONYMOUS}
    for op, label in zip(operations, labels, strict=True):
        for who, headers in callers.items():
            try:
                _fuzz_operation(op, headers, EXAMPLES[who])
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported below
                failures[f"{label} as {who}"] = " ".join(str(exc).split())[:1500]
    print(f"\napi fuzz: {len(operations)} operations x 3 callers, scale {SCALE}: "
          f"{sum(CALLS.values())} requests, by status {dict(sorted(CALLS.items()))}")
    assert sum(CALLS.values()) > 0
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
