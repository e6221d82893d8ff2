"""The producer SDK sends an interleaved impression's log and a feedback's item id."""

from __future__ import annotations

import orjson
import pytest

from armlab.adapters.kafka.producer import _Base
from armlab.errors import InvalidEvent


class Recording(_Base):
    topic_impressions = "imp"
    topic_feedback = "fb"

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict]] = []

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, orjson.loads(value)))


LOG = {"rankers": ["a", "b"], "teams": ["b", "a", "b"], "draft": [["b", "a"], ["b", "a"]],
       "pairs": [{"a": "a", "b": "b", "propensity": 1.0}]}


def test_send_impression_with_interleaving_and_feedback_with_item_id() -> None:
    p = Recording()
    ev = p.send_impression(experiment_key="e", arm_key="b", unit_id="u", propensity=1.0,
                           impression_id="imp1", items=["x", "y", "z"], interleaving=LOG)
    assert ev.interleaving is not None and ev.interleaving.teams == ["b", "a", "b"]
    fb = p.send_feedback(impression_id="imp1", experiment_key="e", kind="click", item_id="y")
    assert fb.item_id == "y"
    (t1, _, imp), (t2, k2, click) = p.sent
    assert (t1, t2, k2) == ("imp", "fb", b"imp1")
    assert imp["interleaving"]["teams"] == ["b", "a", "b"] and click["item_id"] == "y"
    # omitted when unset
    p.send_feedback(impression_id="imp1", experiment_key="e", kind="click")
    assert "item_id" not in p.sent[-1][2]


def test_an_inconsistent_log_is_refused_before_sending() -> None:
    p = Recording()
    with pytest.raises(InvalidEvent):
        p.send_impression(experiment_key="e", arm_key="b", unit_id="u", propensity=1.0,
                          items=["x"], interleaving=LOG)  # three teams for one item
    assert p.sent == []
