"""Synthetic events and delayed labels for any topology: for the demo, tests and benchmarks.

Pure: it returns ``(key, value)`` byte pairs; producing them is the caller's job.
Labels follow a hidden linear rule over the numeric features, so a model can learn
them; a chosen fraction of records is deliberately bad, each tagged with the
dead-letter reason it must get.

>>> from ct_stream.topology import Topology
>>> t = Topology(name="s", events_topic="e", labels_topic="l",
...              features={"x": "float", "c": "str"}, label_type="binary")
>>> batch = generate(t, 100, seed=1, bad_fraction=0.1)
>>> len(batch.events) + len(batch.bad_events), len(batch.labels) <= 100
(100, True)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from ct_stream.records import Event, Label, Reason, encode_event, encode_label
from ct_stream.topology import Topology

__all__ = ["SyntheticBatch", "generate"]

_CATEGORIES = ("a", "b", "c", "d")


@dataclass
class SyntheticBatch:
    """Generated records. ``bad_events`` pairs each bad record with the reason it must get.

    ``truth`` maps every labelled event id to its label. :meth:`in_time_order` gives all
    records as one stream sorted by event time, the order a live system produces them.
    """

    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    labels: list[tuple[bytes, bytes]] = field(default_factory=list)
    bad_events: list[tuple[bytes, bytes, Reason]] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)
    _timeline: list[tuple[float, int, str, bytes, bytes]] = field(default_factory=list, repr=False)

    def in_time_order(self) -> list[tuple[str, bytes, bytes]]:
        """``(kind, key, value)`` for every record ("event" or "label"), sorted by timestamp."""
        return [(kind, key, value) for _, _, kind, key, value in sorted(self._timeline)]


def _feature_value(kind: str, rng: random.Random) -> Any:
    if kind == "float":
        return rng.gauss(0.0, 1.0)
    if kind == "int":
        return rng.randint(0, 100)
    if kind == "bool":
        return rng.random() < 0.5
    return rng.choice(_CATEGORIES)


def _label_for(score: float, label_type: str, rng: random.Random) -> Any:
    if label_type == "binary":
        return rng.random() < 1.0 / (1.0 + math.exp(-score))
    if label_type == "multiclass":
        return _CATEGORIES[int(abs(score) * 2) % len(_CATEGORIES)]
    return score + rng.gauss(0.0, 0.1)


def _bad_event(topology: Topology, good: dict[str, Any], rng: random.Random) -> tuple[bytes, Reason]:
    """A broken copy of a valid event's JSON and the reason it must be dead-lettered with."""
    import orjson

    kind = rng.randrange(4)
    if kind == 0:
        return b"\xff{not json" + rng.randbytes(8), Reason.UNDECODABLE
    broken = {**good, "features": dict(good["features"])}
    name = rng.choice(list(topology.features))
    if kind == 1:
        del broken["features"][name]
        return orjson.dumps(broken), Reason.MISSING_FIELD
    if kind == 2:
        broken["features"][name] = [1, 2] if topology.features[name] != "str" else 7
        return orjson.dumps(broken), Reason.BAD_TYPE
    del broken[topology.id_field]
    return orjson.dumps(broken), Reason.MISSING_FIELD


def generate(topology: Topology, n_events: int, *, seed: int = 0, start_ts: float = 1_700_000_000.0,
             events_per_second: float = 1000.0, label_fraction: float = 0.7, max_delay: float | None = None,
             bad_fraction: float = 0.0) -> SyntheticBatch:
    """``n_events`` events (some bad) and labels for ``label_fraction`` of the good ones.

    Event timestamps advance by ``1 / events_per_second``; each label comes up to
    ``max_delay`` seconds later (default: half the topology's ``max_label_delay``).
    Records are keyed by their id, so events and labels of one id are co-partitioned.
    """
    import orjson

    rng = random.Random(seed)
    schema = topology.record_schema
    delay = topology.join.max_label_delay / 2 if max_delay is None else max_delay
    weights = {name: rng.uniform(-2, 2) for name, kind in topology.features.items() if kind in ("float", "int", "bool")}
    out = SyntheticBatch()
    for i in range(n_events):
        ts = start_ts + i / events_per_second
        eid = f"e{seed}-{i}"
        features = {name: _feature_value(kind, rng) for name, kind in topology.features.items()}
        score = sum(w * (float(features[n]) / (50.0 if topology.features[n] == "int" else 1.0))
                    for n, w in weights.items())
        key = eid.encode()
        event = Event(id=eid, ts=ts, features=features, served_version=None, prediction=None)
        if rng.random() < bad_fraction:
            good = orjson.loads(encode_event(event, schema))
            value, reason = _bad_event(topology, good, rng)
            out.bad_events.append((key, value, reason))
            out._timeline.append((ts, len(out._timeline), "event", key, value))
            continue
        value = encode_event(event, schema)
        out.events.append((key, value))
        out._timeline.append((ts, len(out._timeline), "event", key, value))
        if rng.random() < label_fraction:
            label = _label_for(score, topology.label_type, rng)
            label_ts = ts + rng.uniform(0, delay)
            out.truth[eid] = label
            value = encode_label(Label(id=eid, ts=label_ts, label=label), schema)
            out.labels.append((key, value))
            out._timeline.append((label_ts, len(out._timeline), "label", key, value))
    return out
