"""``ModelSubscriber``: a serving node's view of the promotion topic, hot-swapped.

The subscriber tails ``<name>.models`` from the beginning in a background thread
(:class:`ct_stream.kafka.models_io.ModelsTail`). For each record keyed by the topology's
model name it:

1. verifies the message (:func:`ct_stream.registry.verify_with_artifact`: well-formed,
   HMAC-SHA256 signature, artifact sha256) before anything of the artifact is
   deserialized; a failure is rejected with the registry's reason;
2. checks the name (``wrong_name``) and that the version is above the last accepted one
   (else ``stale``); :func:`~ct_stream.registry.check_successor`'s parent rules are only
   logged (a node that started after compaction has not seen the history);
3. builds the model (:func:`ct_stream.learn.online.learner_from_artifact`; a failure is
   ``unloadable``);
4. swaps it in: ``promote`` makes it the champion (the old champion is kept as
   ``previous``), ``canary`` makes it the candidate for a fraction of request keys
   (with the champion it carries, when this node does not hold that one: compaction),
   ``rollback`` makes the artifact it carries (the restored version's) the champion. A
   promote or rollback ends any canary.

A rejected update changes nothing: the last good model keeps serving, the rejection is
logged and counted (:attr:`ModelSubscriber.rejected`, ``ct_serving_rejected_updates_total``).

Swaps are atomic without a lock on the predict path: all a request needs (champion,
canary, routing threshold, metric children) is one immutable :class:`_Snapshot` object
that :meth:`ModelSubscriber.predict` reads with a single attribute read; the tail thread
builds a new snapshot and assigns it. Loaded models are never mutated.

See docs/serving.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from ct_stream.errors import RegistryError, ServingError, VerificationError
from ct_stream.learn.online import OnlineLearner, learner_from_artifact
from ct_stream.metrics import ServingMetrics
from ct_stream.registry import ModelUpdate, champion_with_artifact, check_successor, decode, verify_with_artifact
from ct_stream.serving.routing import CANARY, CHAMPION, Route, _point64, threshold
from ct_stream.topology import Topology

__all__ = ["ModelSubscriber", "Prediction", "REJECT_REASONS"]

log = logging.getLogger("ct_stream.serving")

#: Reasons an update is rejected: the registry's verification reasons, then the subscriber's.
REJECT_REASONS = (*VerificationError.REASONS, "wrong_name", "stale", "unloadable")


@dataclass(frozen=True)
class Prediction:
    """One answer: ``value`` (binary: bool; multiclass: the class; regression: a number),
    ``probabilities`` (classifiers: ``{class: probability}``; regression: None), the
    ``version`` that answered and its ``route`` (``"champion"`` or ``"canary"``)."""

    value: Any
    probabilities: dict[Any, float] | None
    version: int
    route: Route


@dataclass(frozen=True)
class _Loaded:
    """A verified, loaded model version (never mutated after it is built)."""

    version: int
    update: ModelUpdate
    learner: OnlineLearner


class _Snapshot:
    """Everything a request reads, swapped as a whole (immutable by convention)."""

    __slots__ = ("champion", "canary", "previous", "threshold", "shadow", "champion_count", "canary_count",
                 "shadow_count", "closed")

    def __init__(self, champion: _Loaded | None, canary: _Loaded | None, previous: _Loaded | None,
                 threshold: int, shadow: bool, metrics: ServingMetrics | None, closed: bool = False) -> None:
        self.champion = champion
        self.canary = canary
        self.previous = previous
        self.threshold = threshold
        self.shadow = shadow
        self.closed = closed
        m = metrics
        self.champion_count = None if m is None or champion is None else \
            m.child(m.predictions, str(champion.version), CHAMPION)
        self.canary_count = None if m is None or canary is None else \
            m.child(m.predictions, str(canary.version), CANARY)
        self.shadow_count = None if m is None or canary is None or not shadow else \
            m.child(m.predictions, str(canary.version), "shadow")


class ModelSubscriber:
    """Serve the latest approved version of a topology's model, hot-swapped from Kafka.

    ``signing_key`` is the trainer's HMAC key (bytes); ``insecure=True`` also accepts
    unsigned updates (development only; a signed update is still checked when a key is
    given). ``registry`` receives the ``ct_serving_*`` metrics (a fresh one by default);
    ``clock`` gives seconds since the epoch, for the update-lag metric.

    .. code-block:: python

        with ModelSubscriber("127.0.0.1:9092", topology, signing_key=key) as sub:
            sub.wait_for_version(1, timeout=30)
            answer = sub.predict({"x0": 0.3, "x1": 0.9}, key="user-42")
            answer.value, answer.probabilities, answer.version, answer.route

    Routing: without a key, the champion answers. With a key and a canary loaded, the key's
    deterministic hash point (:mod:`ct_stream.serving.routing`) below
    ``topology.serving.canary_fraction`` sends it to the canary. With
    ``topology.serving.shadow``, the champion answers every request and the canary scores
    each one too (logged at debug level on ``ct_stream.serving`` and counted with route
    ``shadow``); nothing is split.
    """

    def __init__(self, bootstrap: str, topology: Topology, *, signing_key: bytes | None,
                 insecure: bool = False, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(topology, Topology):
            raise ServingError(f"topology: got {type(topology).__name__}; allowed: a ct_stream.topology.Topology")
        if signing_key is None:
            if not insecure:
                raise ServingError("signing_key: got None; allowed: the trainer's HMAC key as non-empty bytes "
                                   "(or insecure=True to accept unsigned updates, development only)")
        elif not isinstance(signing_key, (bytes, bytearray)) or not signing_key:
            raise ServingError(f"signing_key: got {type(signing_key).__name__} of length "
                               f"{len(signing_key) if hasattr(signing_key, '__len__') else '?'}; "
                               "allowed: non-empty bytes")
        self.bootstrap = bootstrap
        self.topology = topology
        self.model_name = topology.model_name
        self.insecure = bool(insecure)
        self._signing_key = None if signing_key is None else bytes(signing_key)
        self._key_bytes = self.model_name.encode("utf-8")
        self._clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServingMetrics(self.registry, topology.name)
        m = self.metrics
        self._latency = m.child(m.predict_seconds)
        self._disagree = m.child(m.shadow_disagreements)
        m.child(m.version, CHAMPION).set(0)
        m.child(m.version, CANARY).set(0)
        self._threshold = threshold(topology.serving.canary_fraction)
        self._shadow = bool(topology.serving.shadow)
        self._snapshot = _Snapshot(None, None, None, self._threshold, self._shadow, None)
        self._last: ModelUpdate | None = None  # the last accepted update (versions must increase)
        self._loaded_max = -1
        self._rejected: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._tail: Any = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ModelSubscriber:
        """Start tailing the promotion topic in a daemon thread; returns self."""
        from ct_stream.kafka.models_io import ModelsTail  # the only Kafka edge of serving

        if self._closed:
            raise ServingError(f"the subscriber of {self.model_name!r} is closed; create a new one")
        if self._tail is not None:
            raise ServingError(f"the subscriber of {self.model_name!r} was started already")
        self._tail = ModelsTail(self.bootstrap, self.topology.models_topic, self.topology.kafka,
                                self._on_record, name=f"ct-serving[{self.model_name}]")
        self._tail.start()
        log.info("subscribed to %s for model %r (%s)", self.topology.models_topic, self.model_name,
                 "INSECURE: unsigned updates accepted" if self.insecure else "signed updates only")
        return self

    def close(self) -> None:
        """Stop the background thread; afterwards :meth:`predict` raises :class:`ServingError`."""
        self._closed = True
        if self._tail is not None:
            self._tail.close()
        self._snapshot = _Snapshot(None, None, None, self._threshold, self._shadow, None, closed=True)
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> ModelSubscriber:
        return self if self._tail is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ serving
    def predict(self, features: dict[str, Any], key: str | bytes | None = None) -> Prediction:
        """Score ``features`` (a dict of the topology's features) with the routed version.

        Raises :class:`ServingError` before the first model is loaded (or after
        :meth:`close`), and :class:`~ct_stream.errors.LearnError` (an ``InputError``) for a
        missing feature, a wrong type or a NaN/inf number.
        """
        t0 = time.perf_counter()
        snap = self._snapshot  # the one read of shared state: everything below is immutable
        champion, canary = snap.champion, snap.canary
        if key is not None and not isinstance(key, (str, bytes)):
            raise ServingError(f"key: got {type(key).__name__}; allowed: a str or bytes request key, or None")
        if champion is None or (canary is not None and key is not None and not snap.shadow
                                and _point64(key) < snap.threshold):
            if canary is None:
                raise ServingError(self._not_ready(snap))
            model, route, counter = canary, CANARY, snap.canary_count
        else:
            model, route, counter = champion, CHAMPION, snap.champion_count
        value, probabilities = model.learner.predict_one(features)
        if snap.shadow and canary is not None and model is champion:
            self._shadow_score(canary, snap, features, champion.version, value, probabilities)
        if counter is not None:
            counter.inc()
        self._latency.observe(time.perf_counter() - t0)
        return Prediction(value, probabilities, model.version, route)

    def _shadow_score(self, canary: _Loaded, snap: _Snapshot, features: dict[str, Any], version: int,
                      value: Any, probabilities: Any) -> None:
        try:
            s_value, s_prob = canary.learner.predict_one(features)
        except Exception as e:  # noqa: BLE001 - the shadow must never break the champion's answer
            log.warning("shadow v%d could not score a request the champion v%d answered: %s",
                        canary.version, version, e)
            return
        if snap.shadow_count is not None:
            snap.shadow_count.inc()
        if s_value != value:
            self._disagree.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("shadow: champion v%d -> %r %r; canary v%d -> %r %r", version, value, probabilities,
                      canary.version, s_value, s_prob)

    def _not_ready(self, snap: _Snapshot) -> str:
        if snap.closed or self._closed:
            return f"the subscriber of {self.model_name!r} is closed"
        where = f"model {self.model_name!r} on {self.topology.models_topic!r} at {self.bootstrap}"
        if self._tail is None:
            return f"no model loaded for {where}: call start() first"
        error = self._tail.error
        if error is not None:
            return f"no model loaded for {where}: reading the topic failed ({error})"
        rejected = dict(self.rejected)
        more = f"; rejected so far: {rejected}" if rejected else ""
        return (f"no model loaded yet for {where}: waiting for the first verified update "
                f"(wait_for_version(1, timeout) blocks until one is loaded){more}")

    # ------------------------------------------------------------------ state
    @property
    def current_version(self) -> int | None:
        """The champion's version (what answers requests without a key), None before one."""
        c = self._snapshot.champion
        return None if c is None else c.version

    @property
    def canary_version(self) -> int | None:
        """The canary's version, or None when there is no canary."""
        c = self._snapshot.canary
        return None if c is None else c.version

    @property
    def previous_version(self) -> int | None:
        """The champion before the current one (kept loaded, for rollback), or None."""
        p = self._snapshot.previous
        return None if p is None else p.version

    @property
    def champion_update(self) -> ModelUpdate | None:
        """The verified update message of the champion (metrics, lineage, gate report)."""
        c = self._snapshot.champion
        return None if c is None else c.update

    @property
    def rejected(self) -> Counter[str]:
        """Rejected updates so far, by reason (a copy)."""
        with self._cond:
            return Counter(self._rejected)

    @property
    def synced(self) -> bool:
        """True once the topic has been read up to the end it had at :meth:`start`."""
        return self._tail is not None and self._tail.caught_up.is_set()

    @property
    def error(self) -> BaseException | None:
        """The fatal error that stopped the background reader, if any (it was logged)."""
        return None if self._tail is None else self._tail.error

    def wait_synced(self, timeout: float) -> bool:
        """Block until :attr:`synced` (True) or ``timeout`` seconds pass (False)."""
        if self._tail is None:
            raise ServingError("wait_synced: call start() first")
        return self._tail.caught_up.wait(timeout)

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until an update with a version ``>= version`` has been loaded (as champion,
        canary or rollback); True then, False after ``timeout`` seconds (or on close)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._loaded_max < version:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    # ------------------------------------------------------------------ updates (tail thread)
    def _on_record(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        if key != self._key_bytes:
            log.debug("%s[%d]@%d: key %r is not model %r; skipped", self.topology.models_topic, partition,
                      offset, key, self.model_name)
            return
        where = f"{self.topology.models_topic}[{partition}]@{offset}"
        if value is None:
            log.info("%s: a tombstone for %r; the loaded models stay", where, self.model_name)
            return
        try:
            update, data = verify_with_artifact(value, self._signing_key, insecure=self.insecure)
        except VerificationError as e:
            self._reject(e.reason, where, _claimed_version(value), str(e))
            return
        except RegistryError as e:  # a caller bug would be caught in __init__; be safe anyway
            self._reject("malformed", where, _claimed_version(value), str(e))
            return
        if update.name != self.model_name:
            self._reject("wrong_name", where, update.version,
                         f"the message names model {update.name!r} under key {self.model_name!r}")
            return
        last = self._last
        if last is not None and update.version <= last.version:
            self._reject("stale", where, update.version,
                         f"version {update.version} is not above the last accepted version {last.version}")
            return
        try:
            check_successor(last, update)
        except RegistryError as e:
            log.info("%s: v%d (%s) does not follow the last update seen here (%s); applied anyway: this node "
                     "may have missed history that was compacted away", where, update.version, update.action, e)
        champion = None
        current = self._snapshot.champion  # only this thread swaps snapshots
        try:
            learner = learner_from_artifact(update.artifact_format, data, self.topology)
            if update.champion_artifact is not None and (current is None or current.version != update.parent_version):
                # a canary whose champion this node does not hold (its update compacted
                # away, or rejected here): the canary carries the champion's artifact, signed with it
                c_update, c_data = champion_with_artifact(update)
                champion = _Loaded(c_update.version, c_update,
                                   learner_from_artifact(c_update.artifact_format, c_data, self.topology))
        except VerificationError as e:
            self._reject(e.reason, where, update.version, f"its champion's artifact: {e}")
            return
        except Exception as e:  # noqa: BLE001 - verified bytes that make no model for this topology
            self._reject("unloadable", where, update.version, f"{type(e).__name__}: {e}")
            return
        self._apply(update, learner, where, champion)

    def _reject(self, reason: str, where: str, version: int | None, detail: str) -> None:
        with self._cond:
            self._rejected[reason] += 1
        m = self.metrics
        m.child(m.rejected, reason).inc()
        current = self.current_version
        log.warning("%s: rejected update%s of %r (%s): %s; still serving %s", where,
                    "" if version is None else f" v{version}", self.model_name, reason, detail,
                    "nothing yet" if current is None else f"v{current}")

    def _apply(self, update: ModelUpdate, learner: OnlineLearner, where: str,
               canary_champion: _Loaded | None = None) -> None:
        """Swap ``update`` in; ``canary_champion``: the champion a canary carried, for a node
        that does not hold it (it replaces the champion; the old one becomes ``previous``)."""
        loaded = _Loaded(update.version, update, learner)
        with self._cond:
            if self._closed:
                return
            snap = self._snapshot
            if update.action == "canary":
                champion, canary, previous = snap.champion, loaded, snap.previous
                if canary_champion is not None:
                    champion, previous = canary_champion, snap.champion if snap.champion is not None else snap.previous
                    log.info("%s: canary v%d carries champion v%d, which this node did not hold: loaded it too",
                             where, update.version, champion.version)
                if champion is None:
                    log.warning("%s: canary v%d arrived with no champion loaded (compacted history?): it answers "
                                "every request until a promote", where, update.version)
            else:  # promote, rollback: a new champion; any canary is over
                champion, canary = loaded, None
                previous = snap.champion if snap.champion is not None else snap.previous
            self._snapshot = _Snapshot(champion, canary, previous, self._threshold, self._shadow, self.metrics)
            self._last = update
            self._loaded_max = max(self._loaded_max, update.version)
            self._cond.notify_all()
        m = self.metrics
        m.child(m.updates, update.action).inc()
        m.child(m.version, CHAMPION).set(0 if champion is None else champion.version)
        m.child(m.version, CANARY).set(0 if canary is None else canary.version)
        lag = self._clock() - update.created_at
        m.child(m.update_lag).observe(max(0.0, lag))
        restored = f", restoring v{update.parent_version}" if update.action == "rollback" else ""
        log.info("%s: loaded v%d (%s%s, %.3f s after it was created); champion %s, canary %s, previous %s",
                 where, update.version, update.action, restored, lag,
                 _v(champion), _v(canary), _v(previous))


def _v(model: _Loaded | None) -> str:
    return "none" if model is None else f"v{model.version}"


def _claimed_version(value: bytes) -> int | None:
    """The version a rejected message claims, for the log only (parsing, no artifact)."""
    try:
        return decode(value)[0].version
    except Exception:  # noqa: BLE001
        return None
