"""Assignment: which arm serves this unit, with the propensity it was chosen with.

The :class:`Assigner` answers from memory. It keeps an immutable view of every experiment it
has seen (status, unit, salt, arms and variants, the latest allocation snapshot's weights) and
a background thread rebuilds the views that changed every ``refresh_s`` seconds
(``ARMLAB_SNAPSHOT_REFRESH_S`` when :mod:`armlab.bootstrap` builds it); the first load happens
in :meth:`Assigner.start`. A request for an experiment not in the cache triggers one
synchronous load; afterwards it is cached (unknown keys are remembered as missing for one
refresh interval, so a flood of bad keys does not hit the database).

Rules:

* unit ``request``: a fresh draw from the snapshot weights per call; propensity = that weight.
* a contextual policy (``segment_thompson``, ``linear_thompson``): the same draws against the
  request context's row, P(arm | context) (:mod:`armlab.services.contextual_serving`); for
  unit ``user`` the context of the first exposure decides, and the unit keeps that arm and
  propensity.
* unit ``user``: sticky. ``u = H(salt, unit_id)`` (BLAKE2b, 64 bits -> [0, 1)) picks the arm by
  the CDF of the weights at first exposure; propensity = that arm's weight at that moment. The
  pair is remembered in memory and written behind to ``unit_assignments`` (a queue drained by a
  writer thread: the request never waits for it; first writer wins with ON CONFLICT DO NOTHING).
  Stored assignments are loaded with the experiment and re-read on every refresh, so several API
  processes converge on the stored arm.
* an arm a guardrail rolled back has weight 0 in the snapshot, so no new unit gets it; a unit
  of ``unit: user`` already stuck to it gets the control with propensity 1 (it is served the
  control deterministically; its stored sticky arm is kept, so the record of who was exposed
  to what stays true);
* stopped and shipped experiments serve one arm with propensity 1, and a running experiment
  without a snapshot is served uniformly (the serving rule, :mod:`armlab.core.serving`).
* draft: Conflict (409). Unknown key: ExperimentNotFound (404).
* ``design: interleaving``: :meth:`Assigner.assign` answers Conflict (409: such an experiment
  serves merged lists); :meth:`Assigner.serve` (``/recommend``) draws a running one's rankers
  for the request from the snapshot's set distribution (:mod:`armlab.services.interleave`).

``Assigner(store, seed=...)`` makes draws and impression ids reproducible (tests, demo). ``store``
is the storage port (:class:`~armlab.services.ports_assignment.AssignmentStore`; the database
one, :class:`~armlab.adapters.db.assignment_store.SqlAssignmentStore`, is wired by
:mod:`armlab.bootstrap`). The cache's entries are :mod:`armlab.services.assignment_views`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from armlab.core.clock import utcnow
from armlab.core.status import ExperimentStatus
from armlab.errors import Conflict, ExperimentNotFound
from armlab.services.assignment_views import Assignment, ExperimentView, build_view, unit_hash
from armlab.services.interleave import InterleavedAssignment, draw_interleaved
from armlab.services.ports_assignment import AssignmentReads, AssignmentStore, StickyRow
from armlab.services.retrying import retrying

__all__ = ["Assigner", "Assignment", "ExperimentView", "build_view", "unit_hash"]

log = logging.getLogger("armlab.assignment")


class Assigner:
    """Serves assignments from an in-memory cache refreshed in the background."""

    def __init__(
        self,
        store: AssignmentStore,
        *,
        seed: int | None = None,
        refresh_s: float = 1.0,
        clock: Callable[[], datetime] | None = None,
        negative_ttl_s: float | None = None,
    ) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._negative_ttl = negative_ttl_s if negative_ttl_s is not None else self._refresh_s
        self._clock = clock or (lambda: utcnow())
        self._rng = np.random.default_rng(seed)
        self._seeded = seed is not None
        self._rng_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._views: dict[str, ExperimentView] = {}
        self._missing: dict[str, float] = {}
        # experiment id -> {unit_id: (arm_key, propensity)}
        self._sticky: dict[int, dict[str, tuple[str, float]]] = {}
        self._sticky_watermark: datetime | None = None
        self._writes: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.write_errors = 0
        self.refreshes = 0
        self.last_refresh_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, background: bool = True) -> Assigner:
        """First load (errors are logged, not raised: the refresh loop retries), then threads."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - keep the API up; the loop retries
            self.last_refresh_error = repr(exc)
            log.exception("initial assignment cache load failed")
        if background and not self._threads:
            for target, name in ((self._refresh_loop, "refresh"), (self._writer_loop, "writer")):
                t = threading.Thread(target=target, name=f"armlab-assigner-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def close(self) -> None:
        """Stop the threads and write every queued sticky assignment."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._writes.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()
        self.flush()

    # ------------------------------------------------------------------ hot path

    def try_assign(
        self, experiment_key: str, unit_id: str, context: dict[str, Any] | None = None
    ) -> Assignment | None:
        """Assign from the cache only; None when the experiment is not cached (never blocks)."""
        view = self._views.get(experiment_key)
        if view is None:
            exp_at = self._missing.get(experiment_key)
            if exp_at is not None and exp_at > time.monotonic():
                raise ExperimentNotFound(f"no experiment with key {experiment_key!r}")
            return None
        if view.status == ExperimentStatus.DRAFT:
            return None  # maybe started since the last refresh: ``assign`` re-reads it
        return self._assign(view, unit_id, context)

    def assign(
        self, experiment_key: str, unit_id: str, context: dict[str, Any] | None = None
    ) -> Assignment:
        """Assign ``unit_id``; loads the experiment synchronously once if it is not cached."""
        got = self.try_assign(experiment_key, unit_id, context)
        if got is not None:
            return got
        return self._assign(self._current(experiment_key), unit_id, context)

    def serve(
        self, experiment_key: str, unit_id: str, context: dict[str, Any] | None = None
    ) -> Assignment | InterleavedAssignment:
        """What ``/recommend`` serves: a running interleaving experiment's rankers for this
        request (:mod:`armlab.services.interleave`), any other experiment's assignment (a
        stopped or shipped interleaving experiment serves its fixed arm)."""
        view = self._current(experiment_key)
        sets = view.ranker_sets
        if sets is None or view.fixed_arm is not None or view.status == ExperimentStatus.DRAFT:
            return self._assign(view, unit_id, context, any_design=True)
        impression_id = self._new_id(view.key)
        with self._rng_lock:
            seed = int(self._rng.integers(2**63))
        return draw_interleaved(
            sets, view.variants, experiment_key=view.key, impression_id=impression_id,
            served_at=self._clock(), snapshot_id=view.snapshot_id,
            rng=np.random.default_rng(seed))

    def _current(self, experiment_key: str) -> ExperimentView:
        """The cached view, or loaded now (unknown: 404; a cached draft is read again: it may
        have been started since the last refresh, by this or another API process)."""
        view = self._views.get(experiment_key)
        if view is None:
            exp_at = self._missing.get(experiment_key)
            if exp_at is not None and exp_at > time.monotonic():
                raise ExperimentNotFound(f"no experiment with key {experiment_key!r}")
        elif view.status != ExperimentStatus.DRAFT:
            return view
        else:
            self.invalidate(experiment_key)
        return self.load(experiment_key)

    def invalidate(self, experiment_key: str) -> None:
        """Forget the cached view of one experiment; the next assignment loads it again (the
        API calls this after it starts, stops or ships an experiment, so this process never
        serves the old state; other processes catch up at their next refresh)."""
        with self._load_lock:
            self._missing.pop(experiment_key, None)
            if experiment_key in self._views:
                views = dict(self._views)
                views.pop(experiment_key, None)
                self._views = views

    def _assign(self, view: ExperimentView, unit_id: str,
                context: dict[str, Any] | None = None, *, any_design: bool = False
                ) -> Assignment:
        if view.status == ExperimentStatus.DRAFT:
            raise Conflict(
                f"experiment {view.key!r} is a draft; start it before asking for assignments"
            )
        if view.design == "interleaving" and not any_design:
            raise Conflict(
                f"experiment {view.key!r} has design 'interleaving' (merged lists of its "
                "rankers): ask /recommend, not /assign"
            )
        if view.fixed_arm is not None:
            arm, p = view.fixed_arm, 1.0
        elif view.unit == "user":
            sticky = self._sticky.setdefault(view.id, {})
            remembered = sticky.get(unit_id)
            if remembered is None:
                arm, p = view.pick(unit_hash(view.salt, unit_id), context)
                remembered = sticky.setdefault(unit_id, (arm, p))  # first writer wins
                if remembered == (arm, p):
                    self._writes.put(
                        {
                            "experiment_id": view.id,
                            "unit_id": unit_id,
                            "arm_key": arm,
                            "propensity": p,
                            "assigned_at": self._clock(),
                        }
                    )
            arm, p = remembered
            if arm in view.rolled_back:
                arm, p = view.control, 1.0
        else:
            with self._rng_lock:
                u = float(self._rng.random())
            arm, p = view.pick(u, context)
        return Assignment(
            impression_id=self._new_id(view.key),
            experiment_key=view.key,
            arm_key=arm,
            variant=view.variants.get(arm, {}),
            propensity=p,
            served_at=self._clock(),
            snapshot_id=view.snapshot_id,
        )

    def _new_id(self, experiment_key: str) -> str:
        """A new impression id: random, or with a seed reproducible and still distinct
        between experiments (the experiment key is hashed in: two seeded runs of the demo on
        one database must not reuse each other's ids)."""
        if self._seeded:
            with self._rng_lock:
                raw = self._rng.bytes(16)
            raw = hashlib.blake2b(experiment_key.encode() + raw, digest_size=16).digest()
            return uuid.UUID(bytes=raw, version=4).hex
        return uuid.uuid4().hex

    def view(self, experiment_key: str) -> ExperimentView | None:
        return self._views.get(experiment_key)

    # ------------------------------------------------------------------ loading

    def load(self, experiment_key: str) -> ExperimentView:
        """Load one experiment (and its stored sticky assignments) into the cache."""
        with self._load_lock:
            view = self._views.get(experiment_key)
            if view is not None:
                return view
            with self._store.reads() as r:
                exp = r.experiment(experiment_key)
                if exp is None:
                    self._missing[experiment_key] = time.monotonic() + self._negative_ttl
                    raise ExperimentNotFound(f"no experiment with key {experiment_key!r}")
                view = build_view(exp, r.latest_snapshot(exp.id))
                if view.unit == "user":
                    self._merge_sticky(r.sticky([exp.id]))
            views = dict(self._views)
            views[view.key] = view
            self._views = views
            self._missing.pop(experiment_key, None)
            return view

    def refresh(self) -> int:
        """Rebuild the views whose experiment version or latest snapshot changed."""
        started = self._clock()
        with self._store.reads() as r:
            views, new_views = self._rebuild_views(r)
            self._refresh_sticky(r, views, new_views)
        self._views = views
        self._sticky_watermark = started
        self.refreshes += 1
        self.last_refresh_error = None
        return len(new_views)

    def _rebuild_views(self, r: AssignmentReads
                       ) -> tuple[dict[str, ExperimentView], dict[str, ExperimentView]]:
        """(every view, the views rebuilt): experiments gone are dropped, those whose version
        or latest snapshot changed (or not cached yet) are rebuilt."""
        latest = r.latest_snapshot_ids()
        heads = r.heads()
        current = self._views
        stale = [
            exp_id
            for exp_id, key, version in heads
            if (v := current.get(key)) is None
            or v.version != version
            or v.snapshot_id != latest.get(exp_id)
        ]
        new_views: dict[str, ExperimentView] = {}
        if stale:
            exps = r.experiments(stale)
            snap_ids = [latest[e.id] for e in exps if e.id in latest]
            snaps = r.snapshots(snap_ids) if snap_ids else {}
            for e in exps:
                new_views[e.key] = build_view(e, snaps.get(e.id))
        keys = {key for _, key, _ in heads}
        views = {k: v for k, v in current.items() if k in keys}
        views.update(new_views)
        return views, new_views

    def _refresh_sticky(self, r: AssignmentReads, views: dict[str, ExperimentView],
                        new_views: dict[str, ExperimentView]) -> None:
        """Sticky assignments written since the last refresh (other processes included); all
        of those of experiments new to the cache."""
        user_ids = [v.id for v in views.values() if v.unit == "user"]
        if not user_ids:
            return
        fresh_ids = {v.id for v in new_views.values()} | {
            i for i in user_ids if i not in self._sticky
        }
        if self._sticky_watermark is not None:
            self._merge_sticky(r.sticky(
                user_ids, since=self._sticky_watermark - timedelta(seconds=5)))
            fresh = [i for i in user_ids if i in fresh_ids]
            if fresh:
                self._merge_sticky(r.sticky(fresh))
        else:
            self._merge_sticky(r.sticky(user_ids))

    def _merge_sticky(self, rows: Iterable[StickyRow]) -> None:
        """Stored assignments win over in-memory ones (first writer across processes wins)."""
        for exp_id, unit_id, arm, p in rows:
            self._sticky.setdefault(exp_id, {})[unit_id] = (arm, float(p))

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - serve the stale cache, retry next time
                self.last_refresh_error = repr(exc)
                log.warning("assignment cache refresh failed: %s", exc)

    # ------------------------------------------------------------------ write-behind

    def _writer_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._writes.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                break
            batch = [item]
            while len(batch) < 1000:
                try:
                    nxt = self._writes.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._stop.set()
                    break
                batch.append(nxt)
            self._write(batch)

    def flush(self) -> int:
        """Write every queued sticky assignment now (tests, shutdown). Returns rows attempted."""
        batch: list[dict[str, Any]] = []
        while True:
            try:
                item = self._writes.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        if batch:
            self._write(batch)
        return len(batch)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        def on_retry(exc: BaseException, wait_s: float) -> None:
            log.warning("storing sticky assignments failed, retrying in %.1fs: %s", wait_s, exc)

        try:
            for attempt in retrying(self._store.is_transient, attempts=3, max_wait_s=1.0,
                                  on_retry=on_retry):
                with attempt:
                    self._store.store_sticky(batch)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the request never waits
            if len(batch) > 1 and not self._store.is_transient(exc):
                # One row's content (e.g. a unit id PostgreSQL refuses) must not cost the
                # others: write the halves separately until the bad row is alone.
                mid = len(batch) // 2
                self._write(batch[:mid])
                self._write(batch[mid:])
                return
            self.write_errors += len(batch)
            log.error("could not store %d sticky assignment(s): %s", len(batch), exc)
