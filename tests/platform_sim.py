"""What a client app does in the platform tests that run the whole embedded platform
(assignment -> events on the MemoryBus -> IngestRunner -> SQLite -> allocator -> results):
assign a unit, produce its impression and, when the simulated user clicks, its feedback one
second later."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from armlab.adapters.db.uow import UnitOfWork
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import Services
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.services.assignment import Assigner
from armlab.services.results import build_results
from armlab.settings import Settings

# A simulated clock that starts a day ago: the consumer refuses events stamped in its future
# (ARMLAB_INGEST_MAX_CLOCK_SKEW_S), and the whole run stays in the past.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def serve(bus: MemoryBus, s: Settings, asg: Assigner, key: str, uid: str, n: int,
          served: datetime, clicks: Callable[[str], bool]) -> str:
    """Assign ``uid`` in ``key`` and produce impression ``i<n>``, and a click one second later
    when ``clicks(arm)`` says so; returns the arm served."""
    a = asg.assign(key, uid)
    imp = {"schema": "impression.v1", "event_id": f"ie{n}", "impression_id": f"i{n}",
           "experiment_key": key, "arm_key": a.arm_key, "unit_id": uid,
           "propensity": a.propensity, "served_at": served.isoformat()}
    bus.produce(s.topic_impressions, orjson.dumps(imp), f"i{n}".encode())
    if clicks(a.arm_key):
        fb = {"schema": "feedback.v1", "event_id": f"fe{n}", "impression_id": f"i{n}",
              "experiment_key": key, "kind": "click", "value": 1.0,
              "occurred_at": (served + timedelta(seconds=1)).isoformat()}
        bus.produce(s.topic_feedback, orjson.dumps(fb), f"i{n}".encode())
    return a.arm_key


def allocator_pass(services: Services, runner: Any, asg: Assigner, now: datetime,
                   shown_p: dict[str, list[float]]) -> None:
    """Ingest what was produced, run one allocator pass at ``now``, refresh the assignment
    cache and append each experiment's first shown p-value (the results endpoint's view) to
    ``shown_p[key]``."""
    runner.drain()
    run_allocation(services.allocation_store, now=now)
    asg.refresh()
    with UnitOfWork(services.session_factory) as uow:
        for k in shown_p:
            seq = build_results(uow, registry.get_experiment(uow, key=k))["sequential"]
            if seq["arms"]:
                shown_p[k].append(seq["arms"][0]["p_value"])
