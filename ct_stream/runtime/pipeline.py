"""The whole loop in one process, on records already in Kafka: the second half of
``ct-stream demo``.

:func:`run_pipeline` ends the input with an end-of-input event and label per partition,
far enough in event time to expire whatever is still pending, then steps a
:class:`~ct_stream.runtime.joiner.JoinerWorker` and a
:class:`~ct_stream.runtime.trainer.TrainerWorker` in turn (as ``ct-stream run --role
all`` does) until the joiner has committed every input record and the trainer has learned
every example the joiner wrote. It then offers the online model to the gate once, reads
the promotion topic back and verifies what was published.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ct_stream.errors import CtStreamError
from ct_stream.kafka.clients import DeliveryTracker, make_producer, produce_retrying
from ct_stream.records import Event, Label, encode_event, encode_label
from ct_stream.runtime.joiner import JoinerWorker
from ct_stream.runtime.models import read_updates
from ct_stream.runtime.together import JoinAndTrain
from ct_stream.runtime.trainer import TrainerWorker
from ct_stream.topology import Topology

__all__ = ["PipelineReport", "run_pipeline"]

_END_VALUES = {"float": 0.0, "int": 0, "bool": False, "str": "end-of-input"}


@dataclass
class PipelineReport:
    """What the joiner wrote, what the trainer learned and published."""

    examples: dict[str, int] = field(default_factory=dict)
    learned: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    gate: str = ""
    published: list[str] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    end_markers: int = 0
    """End-of-input events (one per partition, each joined with its label): counted above."""

    def lines(self) -> list[str]:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in self.metrics.items() if k != "n" and math.isfinite(v))
        markers = f" ({self.end_markers} of them the end-of-input markers)" if self.end_markers else ""
        return [
            "examples   " + ", ".join(f"{k} {v}" for k, v in self.examples.items()) + markers,
            f"learned    {self.learned} examples{markers}, test-then-train; prequential: {shown}",
            f"gate       {self.gate}",
            *[f"published  {p}" for p in self.published],
            f"took       {self.seconds:.2f} s (joiner and trainer in one process)",
        ]


def _end_label(topology: Topology) -> Any:
    if topology.join.default_label is not None:
        return topology.join.default_label
    return {"binary": False, "multiclass": "end-of-input", "regression": 0.0}[topology.label_type]


def end_of_input(topology: Topology, bootstrap: str, end_ts: float) -> dict[tuple[str, int], int]:
    """Produce an end-of-input event and its label to every partition at ``end_ts``;
    return the offset after each, per input ``(topic, partition)``."""
    t = topology
    tracker = DeliveryTracker()
    producer = make_producer(bootstrap, t.kafka, on_delivery=tracker)
    features = {name: _END_VALUES[kind] for name, kind in t.features.items()}
    for p in range(t.partitions):
        sid = f"end-of-input-{p}"
        produce_retrying(producer, t.events_topic, encode_event(Event(sid, end_ts, features), t.record_schema),
                         sid.encode(), partition=p)
        produce_retrying(producer, t.labels_topic, encode_label(Label(sid, end_ts, _end_label(t)), t.record_schema),
                         sid.encode(), partition=p)
    if producer.flush(60) or tracker.failed:
        raise CtStreamError(f"the end-of-input records were not acknowledged: {tracker.first_error or 'timed out'}")
    return {(topic, p): end for topic in (t.events_topic, t.labels_topic)
            for p, end in tracker.offsets(topic)[1].items()}


def run_pipeline(topology: Topology, bootstrap: str, *, signing_key: bytes, data_dir: Path, end_ts: float,
                 timeout: float = 300.0, log: Callable[[str], None] = lambda _: None) -> PipelineReport:
    """Join, learn, gate and publish everything in the topology's input topics (see the module docstring)."""
    started = time.monotonic()
    report = PipelineReport(end_markers=topology.partitions)
    ends = end_of_input(topology, bootstrap, end_ts)
    joiner = JoinerWorker(topology, bootstrap)
    joiner.setup()
    trainer = TrainerWorker(topology, bootstrap, signing_key=signing_key, data_dir=data_dir)
    trainer.setup()
    loop = JoinAndTrain(joiner, trainer)
    log(f"joiner ({joiner.mode}) and trainer ({trainer.learner.path} path) running")
    assert joiner.io is not None
    decision = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            loop.step()
            counts = joiner.group.counts
            written = counts["joined"] + counts["expired"] + counts["corrections"]
            done_up_to = joiner.processed_up_to()
            consumed = all(done_up_to.get(tp, 0) >= end for tp, end in ends.items())
            if consumed and joiner.group.pending == 0 and trainer.learned == written:
                break
            if time.monotonic() > deadline:
                report.problems.append(f"not done after {timeout:.0f} s: {written} examples written, "
                                       f"{trainer.learned} learned, {joiner.group.pending} pending")
                break
        joiner.commit()
        report.examples = {k: counts[k] for k in ("joined", "expired", "corrections", "duplicate_events",
                                                   "duplicate_labels", "late")}
        report.learned = trainer.learned
        report.metrics = trainer.learner.metrics()
        decision = trainer.offer_online()
        if decision is None:
            report.problems.append(f"the online model learned {trainer.learned} examples, fewer than the gate's "
                                   f"min_samples ({topology.gate.min_samples}): nothing to offer (give more events)")
        report.gate = "no candidate" if decision is None else (
            f"{decision.decision} the online model"
            + (f" ({'; '.join(decision.reasons)})" if decision.reasons else " (no champion yet: guards only)"
               if not decision.has_champion else ""))
    finally:
        joiner.close()
        trainer.close()
    for entry in read_updates(bootstrap, topology, signing_key):
        u = entry.update
        if entry.problem is not None or u is None:
            report.published.append(f"offset {entry.offset}: does not verify with this run's key: {entry.problem}")
            continue
        report.published.append(f"v{u.version} ({u.action}, {u.artifact_format}, "
                                f"{'inline' if u.artifact_inline is not None else u.artifact_uri}; signature and "
                                f"sha256 verified; lineage offsets {u.lineage['examples_offsets']})")
    if decision is not None and not any(p.startswith("v") for p in report.published):
        report.problems.append("no verified model version on " + topology.models_topic)
    report.seconds = time.monotonic() - started
    return report
