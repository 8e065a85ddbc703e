"""The trainer worker: examples in, online learning, drift, retrain, gate, signed promotion.

``ct-stream run TOPOLOGY --role trainer`` runs one :class:`TrainerWorker`; it is the single
writer of its model. Per poll of ``<name>.examples`` (``read_committed``, from the
checkpoint's offsets):

1. decode each message (an undecodable one goes to ``<name>.dlq`` with its reason);
2. **test, then train**: the online learner predicts every example before it learns it
   (:class:`~ct_stream.learn.online.OnlineLearner`), and the prequential metrics move;
3. the errors feed the concept-drift detector, the numeric features the data-drift
   monitor; the batch joins the window store;
4. triggers (every N examples, every T seconds, on drift; one cooldown for all) start a
   retrain: the window (or, after drift, the rows since the detection) minus a temporal
   holdout is written as a hashed Parquet snapshot and a fresh model learns it in a
   subprocess (:mod:`ct_stream.runtime.retrain`) while this loop keeps learning;
5. a finished retrain, and the online model every ``publish.online_every``, go to the gate
   (:mod:`ct_stream.gate`) against the champion on the holdout; an approved candidate is
   published to ``<name>.models`` as a signed :class:`~ct_stream.registry.ModelUpdate`.

**Recovery.** Every ``checkpoint_interval`` seconds, after every publish and at shutdown,
the learner's state, the drift detectors, the counters and the examples-topic offsets
learned up to are written to one file atomically (:mod:`ct_stream.runtime.checkpoint`).
After ``kill -9`` the worker loads it and reads on from its offsets: no example is
learned twice or skipped. Versions come from the promotion topic (the highest published
version, whatever the checkpoint says), so they keep increasing across restarts.
The window store is not in the checkpoint: a restarted worker reads the examples it
learned last back from the examples topic (:meth:`TrainerWorker._refill_window`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry

from ct_stream import __version__
from ct_stream.errors import BrokerError, CodecError, LearnError, TrainerError
from ct_stream.gate import GateConfig, GateReport, evaluate
from ct_stream.kafka._process import spawn_guarded, stop_group
from ct_stream.kafka.clients import TopicSpec, ensure_topics
from ct_stream.kafka.trainer_io import ExampleReader, ModelPublisher, read_back
from ct_stream.learn.drift import ConceptDriftMonitor, DataDriftMonitor
from ct_stream.learn.online import LearnStep, OnlineLearner, VersionMetrics, learner_from_artifact, make_learner
from ct_stream.metrics import TrainerMetrics
from ct_stream.records import decode_examples, example_schema
from ct_stream.registry import (ArtifactRef, ModelUpdate, VerificationError, champion_version,
                                champion_with_artifact, check_successor, encode_unsigned, inline_size,
                                path_from_uri, read_artifact_file, sign, store_artifact)
from ct_stream.runtime.checkpoint import write_atomic
from ct_stream.runtime.dedupe import dedupe_flags, dedupe_keys, keys_array, recent_keys
from ct_stream.runtime.models import read_updates
from ct_stream.runtime.smoke import dlq_headers
from ct_stream.topology import Topology
from ct_stream.window import Snapshot, WindowStore, prune_snapshots, write_snapshot

__all__ = ["TrainerWorker", "gate_metric", "topology_hash"]

log = logging.getLogger("ct_stream.trainer")

_CHECKPOINT_KIND = "ct_stream.trainer.Checkpoint/1"
_KEEP_SNAPSHOTS = 5


def gate_metric(topology: Topology) -> str:
    """The gate's metric: ``gate.metric``, else ``log_loss`` (classification) or ``mae``."""
    return topology.gate.metric or ("mae" if topology.label_type == "regression" else "log_loss")


def topology_hash(topology: Topology) -> str:
    """sha256 of the topology's plain-data description (the model as its repr)."""
    return hashlib.sha256(orjson.dumps(topology.describe(), default=str,
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


def step_losses(metric: str, step: LearnStep) -> np.ndarray:
    """Per-example gate losses of a learn step's prequential predictions."""
    if metric == "log_loss":
        return np.asarray(step.loss, dtype=np.float64)
    if metric == "rmse":
        return np.asarray(step.error, dtype=np.float64) ** 2
    return np.asarray(step.error, dtype=np.float64)  # accuracy: 0/1 errors; mae: absolute errors


def _concept_detector(name: str) -> Any:
    from river import drift

    return {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}[name]()


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in values.items()}


@dataclass
class _Retrain:
    """One retrain in flight: its subprocess, snapshot and holdout."""

    proc: subprocess.Popen[bytes]
    job_dir: Path
    trigger: str
    snapshot: Snapshot
    holdout: pa.Table
    offsets: dict[int, int]
    started: float


class TrainerWorker:
    """One trainer process's loop. ``run()`` until ``stop`` is set.

    ``signing_key`` signs every published update (HMAC-SHA256); without one the worker
    refuses to start unless ``insecure=True`` (then updates go out unsigned). ``clock``
    is wall time in seconds (injectable); ``registry`` holds the metrics; ``data_dir``
    (default ``retrain.data_dir``) holds the checkpoint, snapshots and retrain jobs.
    """

    def __init__(self, topology: Topology, bootstrap: str, *, signing_key: bytes | None = None,
                 insecure: bool = False, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, data_dir: str | Path | None = None,
                 max_batch: int = 10_000, checkpoint_interval: float = 5.0) -> None:
        if signing_key is not None and (not isinstance(signing_key, bytes) or not signing_key):
            raise TrainerError("signing_key", signing_key, "non-empty bytes")
        if signing_key is None and not insecure:
            raise TrainerError("signing key", None, "a key (CT_STREAM_SIGNING_KEY for the CLI), or insecure=True "
                                                    "(--insecure) to publish unsigned updates")
        self.t = topology
        self.bootstrap = bootstrap
        self.key = signing_key
        self.insecure = insecure
        self.clock = clock
        self.max_batch = max_batch
        self.poll_timeout = 0.1  # seconds a poll waits for examples; 0 when another worker shares the loop
        self.checkpoint_interval = checkpoint_interval
        self.metrics = TrainerMetrics(registry or CollectorRegistry(), topology.name)
        self.data_dir = Path(data_dir if data_dir is not None else topology.retrain.data_dir)
        self.metric = gate_metric(topology)
        self.gate_config = GateConfig(min_samples=topology.gate.min_samples, alpha=topology.gate.alpha,
                                      max_latency_seconds=topology.gate.max_predict_latency,
                                      max_artifact_bytes=topology.gate.max_artifact_bytes)
        try:
            self._topology_pickle = pickle.dumps(topology)
        except Exception as e:  # noqa: BLE001 - say what cannot go to the retrain subprocess
            raise TrainerError("model.estimator", topology.model.estimator,
                               f"a picklable River estimator or module-level function (the retrain subprocess "
                               f"gets the topology pickled): {e}") from None
        self.reader: ExampleReader | None = None
        self.publisher: ModelPublisher | None = None
        # the learning state (checkpointed)
        self.learner: OnlineLearner = make_learner(topology)
        self.offsets: dict[int, int] = {}
        self.learned = 0
        self.since_retrain = 0
        self.last_retrain_at: float | None = None
        self.started_at = clock()
        self.drift_at: int | None = None  # self.learned when drift was detected, if a retrain waits for it
        self.concept = self._new_concept_monitor()
        self.data_drift = self._new_data_monitor()
        self.served = VersionMetrics(topology.label_type)
        self._seen = recent_keys(topology.retrain.window_rows)  # keys of the most recent examples (dedupe)
        self.duplicates = 0
        # not checkpointed
        self.window = WindowStore(example_schema(topology.record_schema), topology.retrain.window_rows,
                                  topology.retrain.window_bytes)
        self._recent: deque[tuple[pa.Table, np.ndarray, np.ndarray]] = deque()  # (rows, gate losses, predictions)
        self._recent_rows = 0
        self.retrain: _Retrain | None = None
        self.champion: OnlineLearner | None = None
        self.champion_version = 0
        self.latest: ModelUpdate | None = None
        self.champion_update: ModelUpdate | None = None  # the update whose artifact the champion is
        self.canary: ModelUpdate | None = None  # a canary in flight (rollout "canary")
        self._canary_stats: dict[int, list[float]] = {}  # version -> [n, sum, sum of squares] of served losses
        self.last_version = 0
        self._last_checkpoint = clock()
        self._last_online_offer = clock()
        self._last_gauges = 0.0

    # Setup ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        """``<data_dir>/<name>.trainer/checkpoint.bin``."""
        return self.data_dir / f"{self.t.name}.trainer" / "checkpoint.bin"

    def setup(self) -> None:
        """Create the topics, load the checkpoint and the champion, start reading."""
        t = self.t
        ensure_topics(self.bootstrap, [
            TopicSpec(t.examples_topic, t.partitions, t.replication_factor),
            TopicSpec(t.dlq_topic, t.partitions, t.replication_factor),
            TopicSpec(t.models_topic, 1, t.replication_factor, {"cleanup.policy": "compact"}),
        ], t.kafka)
        self._load_checkpoint()
        self._load_champion()
        self.reader = ExampleReader(self.bootstrap, t.examples_topic, self.offsets, t.kafka)
        self._refill_window()  # after the reader checked the checkpoint's partitions
        self.publisher = ModelPublisher(self.bootstrap, t.models_topic, t.kafka)
        log.warning("trainer %s: %s path, %d examples learned so far, champion v%d, publishing %s",
                    t.name, self.learner.path, self.learned, self.champion_version,
                    "signed (HMAC-SHA256)" if self.key else "UNSIGNED (--insecure)")

    def _new_concept_monitor(self) -> ConceptDriftMonitor | None:
        name = self.t.drift.concept_detector
        return None if name == "none" else ConceptDriftMonitor(_concept_detector(name))

    def _new_data_monitor(self) -> DataDriftMonitor | None:
        d = self.t.drift
        numeric = [f for f, kind in self.t.features.items() if kind in ("float", "int")]
        if d.data_method == "none" or not numeric:
            return None
        return DataDriftMonitor(numeric, reference_size=d.reference_size, window=d.window_size,
                                method=d.data_method, threshold=d.data_threshold,
                                every=1 if d.data_method == "psi" else d.window_size)

    def _load_checkpoint(self) -> None:
        path = self.checkpoint_path
        if not path.exists():
            return
        try:
            cp = pickle.loads(path.read_bytes())
            if cp.get("kind") != _CHECKPOINT_KIND:
                raise ValueError(f"kind {cp.get('kind')!r}")
            self.learner = OnlineLearner.from_state(cp["learner"], self.t)
        except Exception as e:  # noqa: BLE001 - refuse to start on a checkpoint we cannot read
            raise TrainerError(f"checkpoint {path}", f"{type(e).__name__}: {e}",
                               "a checkpoint written by this version of ct-stream (move it away to start "
                               "from scratch)") from None
        self.offsets = {int(p): int(o) for p, o in cp["offsets"].items()}
        self.learned = cp["learned"]
        self.since_retrain = cp["since_retrain"]
        self.last_retrain_at = cp["last_retrain_at"]
        self.last_version = cp["last_version"]
        self.drift_at = cp["drift_at"]
        if cp["concept"] is not None and self.concept is not None:
            self.concept = pickle.loads(cp["concept"])
        if cp["data_drift"] is not None and self.data_drift is not None:
            self.data_drift = DataDriftMonitor.from_state(cp["data_drift"])
        self.served = pickle.loads(cp["served"])
        seen = cp["seen"]  # an Arrow string array; a list in checkpoints of earlier versions
        self._seen = recent_keys(self.t.retrain.window_rows, seen.to_pylist() if isinstance(seen, pa.Array) else seen)
        self.duplicates = cp["duplicates"]
        self._recent = deque(cp.get("recent", ()))  # (a checkpoint from before it had none: refills)
        self._recent_rows = sum(t.num_rows for t, _, _ in self._recent)
        log.info("trainer %s: checkpoint loaded: %d examples learned, offsets %s", self.t.name, self.learned,
                 self.offsets)

    def _refill_window(self) -> None:
        """After a restart, put the examples learned last before the checkpoint back into
        the window store (it is not in the checkpoint): the examples topic is read back
        from the checkpoint's offsets until ``retrain.window_rows`` rows or the topic's
        start, the records in the order of their Kafka timestamps (the order they were
        written, as they were learned), duplicates of an id dropped as the dedupe did
        (the first copy stays), and undecodable records skipped (they went to the DLQ)."""
        ends = {p: o for p, o in self.offsets.items() if o > 0}
        if not ends:
            return
        t = self.t
        schema = t.record_schema

        def decode(value: bytes | None) -> pa.RecordBatch | None:
            try:
                return decode_examples(value or b"", schema)
            except CodecError:
                return None

        want = t.retrain.window_rows
        kept: list[tuple[float, int, int, pa.RecordBatch]] = []  # (timestamp, partition, offset, batch)
        for p, end in ends.items():  # one partition at a time: at most about 3 windows in memory
            try:
                got = read_back(self.bootstrap, t.examples_topic, {p: end}, decode, want, t.kafka, timeout=30.0)
            except BrokerError as e:  # the window is for retrains: learning goes on without it
                log.warning("trainer %s: the window store could not be read back (%s); it fills from new examples",
                            t.name, e)
                return
            kept.extend((ts, q, o, b) for q, o, ts, b in got if b is not None and b.num_rows)
            kept.sort(key=lambda r: r[:3])
            rows = 0
            for k in range(len(kept) - 1, -1, -1):  # the newest records that hold the window
                rows += kept[k][3].num_rows
                if rows >= want:
                    del kept[:k]
                    break
        if not kept:
            return
        table = pa.Table.from_batches([r[3] for r in kept])
        first: dict[str, int] = {}
        for k, key in enumerate(dedupe_keys(table)):
            first.setdefault(key, k)
        if len(first) != table.num_rows:
            table = table.take(pa.array(sorted(first.values())))
        for batch in table.slice(max(0, table.num_rows - t.retrain.window_rows)).to_batches():
            self.window.append(batch)
        log.info("trainer %s: window store refilled with %d examples read back from %s", t.name, self.window.rows,
                 t.examples_topic)

    def _load_champion(self) -> None:
        """The latest verified update of this model on the promotion topic, and its model."""
        updates: dict[int, tuple[ModelUpdate, bytes]] = {}
        latest: ModelUpdate | None = None
        for entry in read_updates(self.bootstrap, self.t, self.key, insecure=self.insecure):
            if entry.update is not None:  # a version that does not verify still counts: ours come after it
                self.last_version = max(self.last_version, entry.update.version)
            if entry.problem is not None or entry.update is None or entry.artifact is None:
                log.warning("models topic offset %d: ignored, does not verify: %s", entry.offset, entry.problem)
                continue
            updates[entry.update.version] = (entry.update, entry.artifact)
            if latest is None or entry.update.version > latest.version:
                latest = entry.update
        self.latest = latest
        if latest is None:
            return
        cv = champion_version(latest)
        if cv is None:
            return
        # the version serving now, even if its model cannot be loaded here: the next update's parent
        self.champion_version = cv
        self.metrics.child(self.metrics.champion).set(cv)
        source = latest if latest.action != "canary" else updates.get(cv, (None, b""))[0]
        if source is None and latest.champion_artifact is not None:
            # the champion's own update was compacted away: the canary carries its artifact
            try:
                updates[cv] = champion_with_artifact(latest)
                source = updates[cv][0]
            except VerificationError as e:
                log.warning("champion v%d: the artifact canary v%d carries does not verify (%s)", cv,
                            latest.version, e)
        if source is None:
            log.warning("champion v%d is not on the promotion topic any more (compacted); candidates are judged "
                        "on the guards only", cv)
            return
        self.champion_update = source
        if latest.action == "canary":
            self._start_canary(latest)
        try:
            self.champion = learner_from_artifact(source.artifact_format, updates[source.version][1], self.t)
        except Exception as e:  # noqa: BLE001 - a champion we cannot load: every candidate faces no champion
            log.warning("champion v%d could not be loaded (%s); candidates are judged on the guards only", cv, e)

    # The loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        """Learn, retrain and publish until ``stop`` is set (or ``max_seconds`` pass); then checkpoint."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        if self.reader is None:
            self.setup()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                self.step()
        finally:
            self.close()

    def step(self) -> None:
        """One poll: learn what came, check the retrain, offer candidates, checkpoint when due."""
        assert self.reader is not None
        records = self.reader.poll(self.max_batch, timeout=self.poll_timeout)
        if records:
            self._learn(records)
        now = self.clock()
        self._check_retrain(now)
        if self.retrain is None:
            trigger = self._due(now)
            if trigger is not None:
                self._start_retrain(trigger, now)
        if now - self._last_online_offer >= self.t.publish.online_every:
            self._last_online_offer = now
            self.offer_online()
        if now - self._last_gauges >= 1.0:
            self._last_gauges = now
            self._update_gauges()
        if now - self._last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()

    def _learn(self, records: list[tuple[int, int, bytes | None]]) -> None:
        assert self.reader is not None
        schema = self.t.record_schema
        decoded = []
        for p, o, value in records:
            try:
                decoded.append((p, o, value, decode_examples(value or b"", schema)))
            except CodecError as e:
                self._dead_letter(p, o, value, "undecodable", str(e))
        if decoded:
            parts = [(p, o, value, self._dedupe(pa.Table.from_batches([batch]))) for p, o, value, batch in decoded]
            table = pa.concat_tables([part[3] for part in parts])
            try:
                step = self.learner.learn(table) if table.num_rows else None
            except LearnError:  # the learner is unchanged: find the message at fault, learn the others
                for p, o, value, one in parts:
                    if one.num_rows == 0:
                        continue
                    try:
                        self._absorb(one, self.learner.learn(one))
                    except LearnError as e:
                        self._dead_letter(p, o, value, "invalid", str(e))
            else:
                if step is not None:
                    self._absorb(table, step)
        self.offsets = dict(self.reader.position)

    def _dedupe(self, table: pa.Table) -> pa.Table:
        """Drop examples already learned: the same id (a correction counts apart from its
        expired example) among the last ``retrain.window_rows`` examples
        (:mod:`ct_stream.runtime.dedupe`). A joiner that runs at-least-once (a broker
        without transaction isolation) writes a micro-batch again after a crash;
        exactly-once joiners never do, and nothing is dropped."""
        keep = dedupe_flags(self._seen, table)
        dropped = 0 if keep is None else len(keep) - sum(keep)
        if not dropped:
            return table
        self.duplicates += dropped
        self.metrics.child(self.metrics.duplicates).inc(dropped)
        log.info("trainer %s: %d duplicate examples dropped", self.t.name, dropped)
        return table.filter(pa.array(keep))

    def _absorb(self, table: pa.Table, step: LearnStep) -> None:
        """Everything that follows learning a table: counters, drift, window, holdout ring."""
        n = step.rows
        self.learned += n
        self.since_retrain += n
        self.metrics.child(self.metrics.learned).inc(n)
        self.served.update(table)
        if self.canary is not None:
            self._served_losses(table)
            self._analyse_canary()
        first_row = self.learned - n  # the stream index of the table's first row
        if self.concept is not None:
            hits = self.concept.update(step.error)
            if hits:
                self._drift("concept", first_row + hits[0], f"the error stream changed ({len(hits)} detections "
                            f"in this batch, {self.concept.n_detections} in all)")
        if self.data_drift is not None:
            signals = self.data_drift.update(self.learner.numeric_matrix(table))
            if signals:
                worst = max(signals, key=lambda s: s.statistic)
                self._drift("data", self.learned, f"{len(signals)} features shifted; worst {worst.feature} "
                                                  f"{worst.method} {worst.statistic:.3f} > {worst.threshold}")
                self.data_drift.reset_reference()
        for batch in table.to_batches():
            self.window.append(batch)
        self._recent.append((table, step_losses(self.metric, step), np.asarray(step.prediction)))
        self._recent_rows += n
        holdout = self.t.gate.holdout_size
        while self._recent and self._recent_rows - self._recent[0][0].num_rows >= holdout:
            self._recent_rows -= self._recent.popleft()[0].num_rows

    def _drift(self, detector: str, at: int, detail: str) -> None:
        """Count and log a detection at stream index ``at``; with ``retrain.on_drift`` a
        retrain on the rows from ``at`` on follows once there are enough of them."""
        self.metrics.child(self.metrics.drift, detector).inc()
        log.warning("trainer %s: %s drift detected at example %d: %s", self.t.name, detector, at, detail)
        if self.t.retrain.on_drift and self.drift_at is None:
            self.drift_at = at

    def _dead_letter(self, partition: int, offset: int, value: bytes | None, reason: str, detail: str) -> None:
        assert self.publisher is not None
        self.publisher.produce(self.t.dlq_topic, value, None,
                               dlq_headers(reason, detail, self.t.examples_topic, partition, offset))
        self.metrics.child(self.metrics.bad_messages, reason).inc()
        log.warning("examples partition %d offset %d: %s: %s", partition, offset, reason, detail)

    # Retrain ---------------------------------------------------------------------------
    def _need_rows(self) -> int:
        return self.t.gate.holdout_size + self.t.gate.min_samples

    def _due(self, now: float) -> str | None:
        """The trigger that starts a retrain now, if any (cooldown and data permitting)."""
        r = self.t.retrain
        if self.last_retrain_at is not None and now - self.last_retrain_at < r.cooldown:
            return None
        if self.drift_at is not None:
            return "drift" if self.learned - self.drift_at >= self._need_rows() else None
        if self.window.rows < self._need_rows():
            return None
        if r.every_examples is not None and self.since_retrain >= r.every_examples:
            return "examples"
        since = now - (self.last_retrain_at if self.last_retrain_at is not None else self.started_at)
        if r.every_seconds is not None and since >= r.every_seconds:
            return "schedule"
        return None

    def _start_retrain(self, trigger: str, now: float) -> None:
        table = self.window.table()
        if trigger == "drift" and self.drift_at is not None:
            table = table.slice(max(0, table.num_rows - (self.learned - self.drift_at)))
        cut = max(0, table.num_rows - self.t.gate.holdout_size)
        train, holdout = table.slice(0, cut), table.slice(cut)
        self.drift_at = None
        self.since_retrain = 0
        self.last_retrain_at = now
        snapshot = write_snapshot(train, self.data_dir / "snapshots", name=self.t.name, clock=self.clock)
        prune_snapshots(self.data_dir / "snapshots", _KEEP_SNAPSHOTS, name=self.t.name)
        job_dir = self.data_dir / f"{self.t.name}.trainer" / f"retrain-{snapshot.sequence:08d}"
        if job_dir.exists():
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        job = {"topology": pickle.loads(self._topology_pickle), "fresh_state": self.learner.fresh().state(),
               "snapshot_path": str(snapshot.path), "snapshot_sha256": snapshot.sha256}
        write_atomic(job_dir / "job.pkl", pickle.dumps(job))
        proc = spawn_guarded([sys.executable, "-m", "ct_stream.runtime.retrain", str(job_dir)], job_dir / "log")
        self.retrain = _Retrain(proc, job_dir, trigger, snapshot, holdout, dict(self.offsets), time.monotonic())
        self.metrics.child(self.metrics.retrains, trigger).inc()
        log.warning("trainer %s: retrain (%s) started on %d rows (%s), holdout %d rows", self.t.name, trigger,
                    train.num_rows, snapshot.path.name, holdout.num_rows)

    def _check_retrain(self, now: float) -> None:
        r = self.retrain
        if r is None or r.proc.poll() is None:
            return
        self.retrain = None
        self.metrics.child(self.metrics.retrain_seconds).observe(time.monotonic() - r.started)
        result = r.job_dir / "result.bin"
        if r.proc.returncode != 0 or not result.exists():
            self.metrics.child(self.metrics.retrain_failures).inc()
            tail = (r.job_dir / "log").read_text(errors="replace")[-2000:]
            log.error("trainer %s: retrain failed (exit %s): %s", self.t.name, r.proc.returncode, tail)
            return
        candidate = OnlineLearner.from_state(result.read_bytes(), self.t)
        shutil.rmtree(r.job_dir, ignore_errors=True)
        losses = candidate.losses(r.holdout)
        artifact = candidate.artifact()
        report = self._gate("retrain", candidate, artifact, losses, candidate.predictions(r.holdout), r.holdout)
        if report.approved:
            self._publish(candidate, artifact, report, r.offsets,
                          {"path": str(r.snapshot.path), "sha256": r.snapshot.sha256})

    # Gate and publish -------------------------------------------------------------------
    def offer_online(self) -> GateReport | None:
        """Offer the online model to the gate (and publish it if approved), as the worker
        does every ``publish.online_every``; ``None`` before it has learned
        ``gate.min_samples`` examples. It is judged on its prequential losses over the most
        recent examples (each predicted before it was learned)."""
        if not self._recent or self.learned < self.t.gate.min_samples:
            return None
        holdout, losses, preds = self._online_holdout()
        snapshot_learner = OnlineLearner.from_state(self.learner.state(), self.t)
        artifact = snapshot_learner.artifact()
        report = self._gate("online", snapshot_learner, artifact, losses, preds, holdout)
        if report.approved:
            self._publish(snapshot_learner, artifact, report, dict(self.offsets), None)
        return report

    def _online_holdout(self) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The online candidate's holdout: the last ``gate.holdout_size`` rows learned, with
        their prequential losses and predictions (each made before the row was learned)."""
        holdout = pa.concat_tables([t for t, _, _ in self._recent])
        losses = np.concatenate([lo for _, lo, _ in self._recent])
        preds = np.concatenate([pr for _, _, pr in self._recent])
        cut = max(0, holdout.num_rows - self.t.gate.holdout_size)
        return holdout.slice(cut), losses[cut:], preds[cut:]

    def _gate(self, kind: str, candidate: OnlineLearner, artifact: tuple[str, bytes], losses: np.ndarray,
              predictions: np.ndarray, holdout: pa.Table) -> GateReport:
        champion_losses = None
        if self.champion is not None:
            champion_losses = self.champion.losses(holdout)
            if not np.all(np.isfinite(champion_losses)):
                champion_losses = None  # a champion that cannot score the holdout is no benchmark
        sample = holdout.slice(0, min(holdout.num_rows, 500))
        started = time.perf_counter()
        candidate.predictions(sample)
        latency = (time.perf_counter() - started) / max(1, sample.num_rows)
        report = evaluate(champion_losses, losses, config=self.gate_config, challenger_predictions=predictions,
                          latency_seconds_per_example=latency, artifact_bytes=len(artifact[1]))
        self.metrics.child(self.metrics.gate, kind, report.decision).inc()
        self._record_gate(kind, report)
        log.warning("trainer %s: gate %s for the %s candidate against champion v%d on %d holdout rows: "
                    "champion %s, candidate %s%s", self.t.name, report.decision, kind, self.champion_version,
                    report.n, report.champion_mean_loss, report.challenger_mean_loss,
                    "" if report.approved else f" ({'; '.join(report.reasons)})")
        return report

    @property
    def gate_log_path(self) -> Path:
        """``<data_dir>/<name>.trainer/gate-decisions.jsonl``: one JSON line per gate decision."""
        return self.checkpoint_path.parent / "gate-decisions.jsonl"

    def _record_gate(self, kind: str, report: GateReport) -> None:
        """Append the decision and its report (approved ones also travel in the update)."""
        line = {"at": float(self.clock()), "candidate": kind, "champion_version": self.champion_version,
                "examples_learned": self.learned, "report": report.to_dict()}
        self.gate_log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.gate_log_path, "ab") as f:
            f.write(orjson.dumps(line) + b"\n")

    def _publish(self, candidate: OnlineLearner, artifact: tuple[str, bytes], report: GateReport,
                 offsets: dict[int, int], snapshot: dict[str, str] | None) -> None:
        assert self.publisher is not None
        started = time.perf_counter()
        t = self.t
        version = self.last_version + 1
        fmt, data = artifact
        inline, uri, sha = store_artifact(data, t.publish.artifact_dir, t.model_name, version,
                                          limit=t.publish.inline_max_bytes)
        metrics = {"holdout_mean_loss": report.challenger_mean_loss, "gate_metric": self.metric,
                   "examples_learned": self.learned, **_finite(self.learner.metrics())}
        action = "canary" if t.serving.rollout == "canary" and self.champion_version else "promote"
        champion = self._champion_ref(version, inline) if action == "canary" else None
        update = ModelUpdate(
            name=t.model_name, version=version,
            parent_version=self.champion_version or None, action=action, created_at=float(self.clock()),
            artifact_format=fmt, artifact_sha256=sha, artifact_inline=inline, artifact_uri=uri,  # type: ignore[arg-type]
            metrics=metrics, gate_report=report.to_dict(),
            lineage={"examples_offsets": dict(offsets), "snapshot": snapshot},
            topology_hash=topology_hash(t), package_version=__version__,
            champion_artifact=champion)
        self._send(update)
        if action == "canary":
            self._start_canary(update)
        else:
            self._new_champion(update, candidate)  # a copy of its own: the online model learns on apart
        self.metrics.child(self.metrics.publish_seconds).observe(time.perf_counter() - started)
        log.warning("trainer %s: published v%d (%s, parent %s, %s)", t.name, version, action,
                    update.parent_version, "inline" if inline is not None else uri)
        self.checkpoint()

    def _champion_ref(self, version: int, inline: bytes | None) -> ArtifactRef | None:
        """The champion's artifact for canary ``version`` to carry (its own ``inline`` bytes
        beside it): inline when both fit ``publish.inline_max_bytes``, else the champion's
        bytes go to a file. ``None`` (with a warning) when the champion's update is not known."""
        t, keep = self.t, self.champion_update
        if keep is None:
            log.warning("trainer %s: canary v%d goes out without its champion's artifact (champion v%d's update is "
                        "not known here): a node that starts after compaction serves the canary alone", t.name,
                        version, self.champion_version)
            return None
        c_inline, c_uri = keep.artifact_inline, keep.artifact_uri
        if c_inline is not None and \
                inline_size(c_inline) + (0 if inline is None else inline_size(inline)) > t.publish.inline_max_bytes:
            c_inline, c_uri, _ = store_artifact(c_inline, t.publish.artifact_dir, t.model_name, keep.version, limit=0)
        return ArtifactRef(keep.artifact_format, keep.artifact_sha256, c_inline, c_uri)

    def _send(self, update: ModelUpdate) -> None:
        """Check the successor rules, sign, publish and wait for the broker's ack."""
        assert self.publisher is not None
        check_successor(self.latest, update)
        value = sign(update, self.key) if self.key is not None else encode_unsigned(update)
        self.publisher.publish(self.t.model_name.encode(), value)
        self.latest = update
        self.last_version = update.version

    def _new_champion(self, update: ModelUpdate, model: OnlineLearner | None) -> None:
        """``update`` (a promote, or a rollback carrying the restored artifact) serves now."""
        self.champion_update = update
        if model is not None:
            self.champion = model
        self.champion_version = update.version
        self.canary = None
        self._canary_stats = {}
        if self.data_drift is not None and update.action == "promote":
            self.data_drift.reset_reference()
        self.metrics.child(self.metrics.champion).set(update.version)

    # Canary analysis --------------------------------------------------------------------
    def _start_canary(self, update: ModelUpdate) -> None:
        self.canary = update
        self._canary_stats = {update.version: [0.0, 0.0, 0.0], self.champion_version: [0.0, 0.0, 0.0]}

    def _served_losses(self, table: pa.Table) -> None:
        """Add the losses of the served predictions of the champion and the canary, on
        examples of events since the canary was published (both served the same time
        range; the examples of that range are as mature for both)."""
        assert self.canary is not None
        versions = table.column("served_version").to_numpy(zero_copy_only=False)
        predictions = table.column("prediction")
        recent = pc.greater_equal(table.column("event_ts"), self.canary.created_at).to_numpy(zero_copy_only=False)
        labels = table.column("label")
        for version, stats in self._canary_stats.items():
            rows = np.flatnonzero(recent & (versions == version) & predictions.is_valid().to_numpy(zero_copy_only=False))
            if rows.size == 0:
                continue
            y = labels.take(pa.array(rows)).to_numpy(zero_copy_only=False)
            pred = predictions.take(pa.array(rows)).to_numpy(zero_copy_only=False)
            if self.t.label_type == "binary":
                p_true = np.clip(np.where(y.astype(bool), pred, 1.0 - pred), 1e-15, 1.0)
                loss = -np.log(p_true)
            elif self.t.label_type == "regression":
                loss = np.abs(y.astype(np.float64) - pred.astype(np.float64))
            else:
                loss = (pred != y).astype(np.float64)
            loss = loss[np.isfinite(loss)]
            stats[0] += loss.size
            stats[1] += float(loss.sum())
            stats[2] += float((loss * loss).sum())

    def _analyse_canary(self) -> None:
        """Promote or roll back the canary once both versions have ``serving.canary_min_labels``
        labelled served predictions: rolled back when its mean loss is worse than the
        champion's with a one-sided Welch z-test at ``gate.alpha``, promoted otherwise."""
        assert self.canary is not None
        need = self.t.serving.canary_min_labels
        canary, champion = self._canary_stats[self.canary.version], self._canary_stats[self.champion_version]
        if canary[0] < need or champion[0] < need:
            return

        def mean_var(st: list[float]) -> tuple[float, float]:
            n, total, sq = st
            mean = total / n
            return mean, max(0.0, (sq - n * mean * mean) / max(1.0, n - 1.0))

        (m_c, v_c), (m_ch, v_ch) = mean_var(canary), mean_var(champion)
        se = math.sqrt(v_c / canary[0] + v_ch / champion[0])
        z = (m_c - m_ch) / se if se > 0 else (math.inf if m_c > m_ch else 0.0)
        p_worse = 0.5 * math.erfc(z / math.sqrt(2.0))  # P(Z >= z) under "the canary is no worse"
        worse = p_worse < self.t.gate.alpha
        analysis = {"canary_version": self.canary.version, "champion_version": self.champion_version,
                    "canary_mean_loss": m_c, "champion_mean_loss": m_ch, "canary_n": int(canary[0]),
                    "champion_n": int(champion[0]), "z": z if math.isfinite(z) else None, "p_value": p_worse,
                    "decision": "rollback" if worse else "promote"}
        self._finish_canary(worse, analysis)

    def _finish_canary(self, worse: bool, analysis: dict[str, Any]) -> None:
        """Publish the canary analysis' outcome: a promote carrying the canary's artifact,
        or a rollback carrying the champion's."""
        canary, keep = self.canary, self.champion_update
        assert canary is not None
        if keep is None and worse:  # the champion's update was compacted away: nothing to roll back to
            log.error("trainer %s: canary v%d is worse than champion v%d, whose artifact is no longer on %s: "
                      "roll back by hand (ct-stream models rollback)", self.t.name, canary.version,
                      self.champion_version, self.t.models_topic)
            self.canary, self._canary_stats = None, {}
            return
        source = keep if worse else canary
        update = ModelUpdate(
            name=self.t.model_name, version=self.last_version + 1, parent_version=self.champion_version,
            action="rollback" if worse else "promote", created_at=float(self.clock()),
            artifact_format=source.artifact_format, artifact_sha256=source.artifact_sha256,
            artifact_inline=source.artifact_inline, artifact_uri=source.artifact_uri,
            metrics={**source.metrics, "canary_analysis": _finite(analysis)}, gate_report=source.gate_report,
            lineage=source.lineage, topology_hash=source.topology_hash, package_version=source.package_version)
        self._send(update)
        model = None
        if not worse:
            try:
                data = canary.artifact_inline
                if data is None:
                    data = read_artifact_file(path_from_uri(canary.artifact_uri))  # type: ignore[arg-type]
                model = learner_from_artifact(canary.artifact_format, data, self.t)
            except Exception as e:  # noqa: BLE001 - the version is promoted; only our copy of it failed
                log.warning("promoted canary v%d could not be loaded here (%s)", canary.version, e)
        self._new_champion(update, model)
        self.metrics.child(self.metrics.canary, analysis["decision"]).inc()
        log.warning("trainer %s: canary v%d %s as v%d: mean served loss %.4f (n=%d) against the champion's "
                    "%.4f (n=%d), p=%.3g", self.t.name, canary.version,
                    "rolled back" if worse else "promoted", update.version, analysis["canary_mean_loss"],
                    analysis["canary_n"], analysis["champion_mean_loss"], analysis["champion_n"], analysis["p_value"])
        self.checkpoint()

    # Checkpoint and metrics ---------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write model state, detectors, counters and offsets in one atomic file (dead
        letters are flushed first: nothing the checkpoint skips is lost)."""
        started = time.perf_counter()
        if self.publisher is not None:
            self.publisher.flush()
        cp = {"kind": _CHECKPOINT_KIND, "learner": self.learner.state(), "offsets": dict(self.offsets),
              "learned": self.learned, "since_retrain": self.since_retrain, "last_retrain_at": self.last_retrain_at,
              "last_version": self.last_version, "drift_at": self.drift_at,
              "concept": None if self.concept is None else pickle.dumps(self.concept),
              "data_drift": None if self.data_drift is None else self.data_drift.state(),
              "served": pickle.dumps(self.served), "duplicates": self.duplicates,
              # as one Arrow array: pickled as a buffer, about a third of the time a list of
              # str takes (7 against 19 ms for 200,000 ids; a checkpoint follows every publish)
              "seen": keys_array(self._seen),
              "recent": list(self._recent)}  # the gate's holdout: a few thousand rows with their losses
        write_atomic(self.checkpoint_path, pickle.dumps(cp, protocol=pickle.HIGHEST_PROTOCOL))
        self._last_checkpoint = self.clock()
        self.metrics.child(self.metrics.checkpoint_seconds).observe(time.perf_counter() - started)

    def _update_gauges(self) -> None:
        m = self.metrics
        for key, value in self.learner.metrics().items():
            if key == "n" or not isinstance(value, float) or not math.isfinite(value):
                continue
            scope, name = ("rolling", key[len("rolling_"):]) if key.startswith("rolling_") else ("cumulative", key)
            m.child(m.prequential, name, scope).set(value)
        for version, values in self.served.get().items():
            for name, value in values.items():
                if name != "n" and isinstance(value, float) and math.isfinite(value):
                    m.child(m.served, str(version), name).set(value)
        if self.reader is not None:
            m.child(m.lag).set(self.reader.lag())

    def close(self) -> None:
        """Stop a retrain in flight, checkpoint, close the clients."""
        if self.retrain is not None:
            stop_group(self.retrain.proc, timeout=5)
            self.retrain = None
        if self.reader is None:
            return
        try:
            self.checkpoint()
        finally:
            self.reader.close()
            self.reader = None
            if self.publisher is not None:
                self.publisher.close()
                self.publisher = None
