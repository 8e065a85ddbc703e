"""ct_stream.serving: the model subscriber against a real broker; predict_one and routing without."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ct_stream.errors import LearnError, ServingError
from ct_stream.kafka.clients import TopicSpec, ensure_topics
from ct_stream.kafka.trainer_io import ModelPublisher
from ct_stream.learn.online import OnlineLearner, make_learner
from ct_stream.registry import ArtifactRef, ModelUpdate, encode_unsigned, sign, store_artifact
from ct_stream.serving import ModelSubscriber, Prediction, canary_point, route_for
from tests.helpers import batch_of, trained, wait_for

KEY = b"test-signing-key"
PROBE = [{"x0": float(a), "x1": float(b)} for a, b in itertools.product(np.linspace(0, 1, 5), repeat=2)]


# ------------------------------------------------------------------ helpers


def topology(name: str, **serving: Any) -> Any:
    from ct_stream.topology import Topology

    return Topology(name=name, events_topic=f"{name}.events", labels_topic=f"{name}.labels",
                    features={"x0": "float", "x1": "float"}, label_type="binary", serving=serving)


class Models:
    """Publishes signed model updates of one topology to its promotion topic."""

    def __init__(self, broker: Any, t: Any, tmp_path: Path) -> None:
        self.t = t
        self.dir = tmp_path / "artifacts"
        ensure_topics(broker.bootstrap, [TopicSpec(t.models_topic, 1, 1, {"cleanup.policy": "compact"})])
        self.publisher = ModelPublisher(broker.bootstrap, t.models_topic)

    def update(self, learner: OnlineLearner, version: int, parent: int | None, action: str = "promote",
               created_at: float = 1.7e9, in_file: str | None = None) -> ModelUpdate:
        """``in_file``: write the artifact to that sub-directory (else it is inline)."""
        fmt, data = learner.artifact()
        inline, uri, sha = store_artifact(data, self.dir / (in_file or "."), self.t.model_name, version,
                                          limit=900_000 if in_file is None else 0)
        return ModelUpdate(name=self.t.model_name, version=version, parent_version=parent, action=action,
                           created_at=created_at, artifact_format=fmt, artifact_sha256=sha,
                           artifact_inline=inline, artifact_uri=uri)

    def send(self, value: bytes | None, key: str | None = None) -> None:
        self.publisher.publish((key or self.t.model_name).encode(), value)  # type: ignore[arg-type]

    def publish(self, learner: OnlineLearner, version: int, parent: int | None, action: str = "promote",
                **kw: Any) -> ModelUpdate:
        update = self.update(learner, version, parent, action, **kw)
        self.send(sign(update, KEY))
        return update

    def close(self) -> None:
        self.publisher.close()


@pytest.fixture
def subscribers() -> Iterator[list[ModelSubscriber]]:
    """Subscribers a test starts; all closed at the end."""
    started: list[ModelSubscriber] = []
    yield started
    for sub in started:
        sub.close()


def subscribe(started: list[ModelSubscriber], broker: Any, t: Any, **kw: Any) -> ModelSubscriber:
    kw.setdefault("signing_key", KEY)
    sub = ModelSubscriber(broker.bootstrap, t, **kw)
    started.append(sub)
    return sub.start()


def answers(sub: ModelSubscriber) -> list[float]:
    return [sub.predict(x).probabilities[True] for x in PROBE]  # type: ignore[index]


def expected(learner: OnlineLearner) -> list[float]:
    return [learner.predict_one(x)[1][True] for x in PROBE]  # type: ignore[index]


# ------------------------------------------------------------------ against a broker


def test_a_new_version_is_served_and_metrics_show_it(broker: Any, tmp_path: Path, subscribers: list) -> None:
    t = topology(broker.topic("serve"))
    a, b = trained(t, 0, seed=1), trained(t, 1, seed=2)
    assert expected(a) != expected(b)
    models = Models(broker, t, tmp_path)
    models.publish(a, 1, None, created_at=1000.0)
    registry = CollectorRegistry()
    sub = subscribe(subscribers, broker, t, registry=registry, clock=lambda: 1002.5)
    assert sub.wait_for_version(1, 30)
    assert sub.current_version == 1 and sub.previous_version is None and sub.canary_version is None
    assert answers(sub) == expected(a)
    answer = sub.predict(PROBE[3])
    assert answer == Prediction(expected(a)[3] > 0.5, {True: expected(a)[3], False: 1 - expected(a)[3]}, 1,
                                "champion")
    models.publish(b, 2, 1, created_at=1001.0)
    assert sub.wait_for_version(2, 30)
    assert sub.current_version == 2 and sub.previous_version == 1
    assert answers(sub) == expected(b)
    assert all(sub.predict(x).version == 2 for x in PROBE)
    assert sub.wait_synced(10) and sub.error is None and not sub.rejected
    models.close()

    text = generate_latest(registry).decode()
    topo = f'topology="{t.name}"'
    assert f'ct_serving_predictions_total{{route="champion",{topo},version="1"}} {len(PROBE) + 1}.0' in text
    assert f'ct_serving_predictions_total{{route="champion",{topo},version="2"}} {2 * len(PROBE)}.0' in text
    assert f'ct_serving_model_version{{route="champion",{topo}}} 2.0' in text
    assert f'ct_serving_model_version{{route="canary",{topo}}} 0.0' in text
    assert f'ct_serving_updates_total{{action="promote",{topo}}} 2.0' in text
    assert f"ct_serving_update_lag_seconds_count{{{topo}}} 2.0" in text
    assert f"ct_serving_update_lag_seconds_sum{{{topo}}} 4.0" in text  # 2.5 + 1.5
    assert f"ct_serving_predict_duration_seconds_count{{{topo}}} {3 * len(PROBE) + 1}.0" in text
    assert 'le="5e-05"' in text and 'le="0.1"' in text


def test_bad_updates_are_rejected_and_the_last_good_version_serves(broker: Any, tmp_path: Path,
                                                                   subscribers: list) -> None:
    t = topology(broker.topic("reject"))
    a, b, c = trained(t, 0, seed=1), trained(t, 1, seed=2), trained(t, 0, seed=3, n=500)
    models = Models(broker, t, tmp_path)
    registry = CollectorRegistry()
    sub = subscribe(subscribers, broker, t, registry=registry)
    with pytest.raises(ServingError, match="no model loaded yet"):
        sub.predict(PROBE[0])
    models.publish(a, 1, None)
    assert sub.wait_for_version(1, 30)

    # a byte flipped in a file artifact after signing: its sha256 differs
    altered = models.update(b, 2, 1, in_file="altered")
    value = sign(altered, KEY)
    path = Path(altered.artifact_uri.removeprefix("file://"))  # type: ignore[union-attr]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    models.send(value)
    # a field changed after signing
    models.send(sign(models.update(b, 2, 1), KEY).replace(b'"action":"promote"', b'"action":"canary"'))
    # signed with another key
    models.send(sign(models.update(b, 2, 1), b"another-key"))
    # not signed
    models.send(encode_unsigned(models.update(b, 2, 1)))
    # its artifact file is gone
    gone = models.update(b, 2, 1, in_file="gone")
    value = sign(gone, KEY)
    Path(gone.artifact_uri.removeprefix("file://")).unlink()  # type: ignore[union-attr]
    models.send(value)
    # not a message at all
    models.send(b"not json")
    # a valid signature on a version that is not above the last accepted one
    models.publish(c, 1, None)
    # another model's key is not this subscriber's business
    models.send(b"whatever", key="other-model")

    want = {"bad_hash": 1, "bad_signature": 2, "unsigned": 1, "missing_artifact": 1, "malformed": 1, "stale": 1}
    wait_for(lambda: sum(sub.rejected.values()) >= 7, 30, "the 7 rejections")
    assert dict(sub.rejected) == want
    assert sub.current_version == 1 and answers(sub) == expected(a)
    for reason, n in want.items():
        assert registry.get_sample_value("ct_serving_rejected_updates_total",
                                         {"topology": t.name, "reason": reason}) == n
    # a rejected version number does not block a good update with that number
    models.publish(b, 2, 1)
    assert sub.wait_for_version(2, 30)
    assert answers(sub) == expected(b) and sub.previous_version == 1 and dict(sub.rejected) == want

    # insecure mode (development) accepts the unsigned v2; the signed v2 is then stale for it
    lax = subscribe(subscribers, broker, t, insecure=True)
    assert lax.wait_synced(30)
    assert lax.current_version == 2 and lax.champion_update is not None
    assert lax.champion_update.metrics == {} and lax.previous_version == 1
    assert dict(lax.rejected) == {"bad_hash": 1, "bad_signature": 2, "missing_artifact": 1, "malformed": 1,
                                  "stale": 2}
    assert answers(lax) == expected(b)
    models.close()


def test_canary_split_follows_the_fraction_by_key_and_shadow_scores_everything(
        broker: Any, tmp_path: Path, subscribers: list, caplog: pytest.LogCaptureFixture) -> None:
    fraction = 0.2
    t = topology(broker.topic("canary"), canary_fraction=fraction)
    a, b = trained(t, 0, seed=1), trained(t, 1, seed=2)
    models = Models(broker, t, tmp_path)
    models.publish(a, 1, None)
    models.publish(b, 2, 1, action="canary")
    models.close()
    sub = subscribe(subscribers, broker, t)
    assert sub.wait_for_version(2, 30)
    assert (sub.current_version, sub.canary_version) == (1, 2)
    x = PROBE[7]
    n = 10_000
    routes = [sub.predict(x, key=f"user-{i}") for i in range(n)]
    canary = [p for p in routes if p.route == "canary"]
    sigma = math.sqrt(n * fraction * (1 - fraction))
    assert abs(len(canary) - n * fraction) <= 4 * sigma, (len(canary), n * fraction, sigma)
    assert {p.version for p in canary} == {2} and {p.version for p in routes if p.route == "champion"} == {1}
    assert canary[0].probabilities == b.predict_one(x)[1]
    champion = next(p for p in routes if p.route == "champion")
    assert champion.probabilities == a.predict_one(x)[1]
    # the same key always gets the same route; no key: the champion
    for i in range(0, n, 97):
        again = sub.predict(PROBE[i % len(PROBE)], key=f"user-{i}")
        assert (again.route, again.version) == (routes[i].route, routes[i].version)
    assert sub.predict(x).route == "champion"

    # shadow: the champion answers every request, the canary scores each one too
    shadow_t = topology(t.name, canary_fraction=fraction, shadow=True)
    registry = CollectorRegistry()
    shadow = subscribe(subscribers, broker, shadow_t, registry=registry)
    assert shadow.wait_for_version(2, 30)
    with caplog.at_level(logging.DEBUG, logger="ct_stream.serving"):
        out = [shadow.predict(p, key=f"user-{i}") for i, p in enumerate(PROBE)]
    assert {(p.route, p.version) for p in out} == {("champion", 1)}
    assert [p.probabilities[True] for p in out] == expected(a)  # type: ignore[index]
    labels = {"topology": t.name, "version": "2", "route": "shadow"}
    assert registry.get_sample_value("ct_serving_predictions_total", labels) == len(PROBE)
    disagreements = sum(a.predict_one(p)[0] != b.predict_one(p)[0] for p in PROBE)
    assert registry.get_sample_value("ct_serving_shadow_disagreements_total", {"topology": t.name}) == disagreements
    shadow_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shadow:")]
    assert len(shadow_lines) == len(PROBE) and "champion v1" in shadow_lines[0] and "canary v2" in shadow_lines[0]


def test_rollback_restores_the_older_model_and_a_restart_loads_the_latest(broker: Any, tmp_path: Path,
                                                                         subscribers: list) -> None:
    t = topology(broker.topic("rollback"))
    a, b = trained(t, 0, seed=1), trained(t, 1, seed=2)
    models = Models(broker, t, tmp_path)
    models.publish(a, 1, None)
    sub = subscribe(subscribers, broker, t)
    assert sub.wait_for_version(1, 30)
    models.publish(b, 2, 1)
    assert sub.wait_for_version(2, 30) and answers(sub) == expected(b)
    models.publish(a, 3, 1, action="rollback")  # republishes v1's artifact as v3
    assert sub.wait_for_version(3, 30)
    assert (sub.current_version, sub.previous_version) == (3, 2)
    assert answers(sub) == expected(a)
    # a canary, then a tampered update: the latest approved state is champion v3 + canary v4
    models.publish(b, 4, 3, action="canary")
    models.send(sign(models.update(b, 5, 3), KEY).replace(b'"version":5', b'"version":6'))
    wait_for(lambda: sub.rejected["bad_signature"] == 1, 30, "the tampered v5")
    models.close()
    assert (sub.current_version, sub.canary_version) == (3, 4)

    restarted = subscribe(subscribers, broker, t)
    assert restarted.wait_synced(30)
    assert (restarted.current_version, restarted.canary_version) == (3, 4)
    assert answers(restarted) == expected(a)
    assert dict(restarted.rejected) == {"bad_signature": 1}
    sub.close()
    with pytest.raises(ServingError, match="closed"):
        sub.predict(PROBE[0])


def test_a_node_started_after_compaction_gets_the_champion_the_canary_carries(
        broker: Any, tmp_path: Path, subscribers: list) -> None:
    """Compaction keeps one update per model: once a canary is published, a node that
    starts later may find only the canary on the topic. The canary carries its champion's
    artifact (signed with it), so the node serves champion and canary as the others do."""
    t = topology(broker.topic("compacted"), canary_fraction=0.5)
    a, b = trained(t, 0, seed=1), trained(t, 1, seed=2)
    models = Models(broker, t, tmp_path)
    champion = models.update(a, 1, None)
    ref = ArtifactRef(champion.artifact_format, champion.artifact_sha256, champion.artifact_inline)
    models.send(sign(replace(models.update(b, 2, 1, action="canary"), champion_artifact=ref), KEY))
    sub = subscribe(subscribers, broker, t)
    assert sub.wait_for_version(2, 30)
    assert (sub.current_version, sub.canary_version) == (1, 2)
    assert answers(sub) == expected(a)  # no key: the champion
    keyed = [sub.predict(PROBE[0], key=f"k{i}") for i in range(200)]
    assert {p.version for p in keyed} == {1, 2}
    assert dict(sub.rejected) == {}

    # a champion artifact in a file that is gone: the whole update is rejected, nothing served
    t2 = topology(broker.topic("compacted-missing"))
    models2 = Models(broker, t2, tmp_path / "2")
    in_file = models2.update(a, 1, None, in_file="gone")
    ref = ArtifactRef(in_file.artifact_format, in_file.artifact_sha256, uri=in_file.artifact_uri)
    Path(in_file.artifact_uri.removeprefix("file://")).unlink()  # type: ignore[union-attr]
    models2.send(sign(replace(models2.update(b, 2, 1, action="canary"), champion_artifact=ref), KEY))
    models2.publish(b, 3, 1)  # a later promote still loads
    sub2 = subscribe(subscribers, broker, t2)
    assert sub2.wait_for_version(3, 30)
    assert dict(sub2.rejected) == {"missing_artifact": 1}
    assert (sub2.current_version, sub2.canary_version) == (3, None)
    models.close()
    models2.close()


def test_before_the_first_model_predict_says_why(broker: Any, tmp_path: Path, subscribers: list) -> None:
    t = topology(broker.topic("empty"))  # its models topic does not even exist yet
    with pytest.raises(ServingError, match="signing_key: got None"):
        ModelSubscriber(broker.bootstrap, t, signing_key=None)
    sub = ModelSubscriber(broker.bootstrap, t, signing_key=KEY)
    with pytest.raises(ServingError, match=r"call start\(\) first"):
        sub.predict(PROBE[0])
    subscribers.append(sub.start())
    with pytest.raises(ServingError, match=f"no model loaded yet for model '{t.name}'"):
        sub.predict(PROBE[0])
    assert not sub.wait_for_version(1, 0.2)
    assert sub.current_version is None and sub.error is None and not sub.synced
    # the topic appears later (a serving node started before the trainer): the first version is served
    models = Models(broker, t, tmp_path)
    a = trained(t, 0, seed=1, n=300)
    models.publish(a, 1, None)
    models.close()
    assert sub.wait_for_version(1, 30) and answers(sub) == expected(a)


# ------------------------------------------------------------------ without a broker


def test_canary_routing_is_deterministic_and_uniform() -> None:
    n, fraction = 10_000, 0.05
    keys = [f"k{i}" for i in range(n)]
    hits = sum(route_for(k, fraction) == "canary" for k in keys)
    sigma = math.sqrt(n * fraction * (1 - fraction))
    assert abs(hits - n * fraction) <= 4 * sigma
    assert [route_for(k, fraction) for k in keys[:50]] == [route_for(k, fraction) for k in keys[:50]]
    assert route_for(b"k1", fraction) == route_for("k1", fraction)
    # raising the fraction only moves keys to the canary
    small = {k for k in keys if route_for(k, 0.1) == "canary"}
    large = {k for k in keys if route_for(k, 0.3) == "canary"}
    assert small <= large
    points = np.array([canary_point(k) for k in keys])
    assert points.min() >= 0 and points.max() < 1 and abs(points.mean() - 0.5) < 0.02


ALL_KINDS = {"x1": "float", "k": "int", "flag": "bool", "color": "str"}


def mixed_rows(label_type: str, n: int, seed: int, colors: tuple[str, ...]) -> list[tuple[dict[str, Any], Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x = {"x1": float(rng.normal()), "k": int(rng.integers(0, 20)), "flag": bool(rng.random() < 0.4),
             "color": colors[int(rng.integers(0, len(colors)))]}
        margin = 1.2 * x["x1"] + 0.05 * x["k"] - 0.5 + (0.9 if x["flag"] else 0) + (0.8 if x["color"] == "red" else 0)
        if label_type == "binary":
            y: Any = bool(rng.random() < 1 / (1 + math.exp(-margin)))
        elif label_type == "multiclass":
            y = "a" if margin < 0 else ("b" if margin < 1 else "c")
        else:
            y = margin + float(rng.normal(0, 0.1))
        rows.append((x, y))
    return rows


@pytest.mark.parametrize("label_type,features", [
    ("binary", ALL_KINDS),                      # batch path with every kind of feature
    ("binary", {"color": "str", "size": "str"}),  # per-example (all str)
    ("multiclass", ALL_KINDS),
    ("regression", ALL_KINDS),
])
def test_predict_one_agrees_with_predictions(label_type: str, features: dict[str, str]) -> None:
    from ct_stream.topology import Topology

    join = {"binary": {}, "multiclass": {"default_label": "a"}, "regression": {"default_label": 0.0}}[label_type]
    t = Topology(name="t", events_topic="t.e", labels_topic="t.l", features=features, label_type=label_type,
                 join=join)
    learner = make_learner(t)

    def fit(rows: list[tuple[dict[str, Any], Any]]) -> list[tuple[dict[str, Any], Any]]:
        return [({k: v for k, v in x.items() if k in features} | ({"size": "sml"[i % 3]} if "size" in features
                                                                   else {}), y) for i, (x, y) in enumerate(rows)]

    train = fit(mixed_rows(label_type, 600, seed=1, colors=("red", "green", "blue")))
    learner.learn(batch_of(t, train[:300]))
    first = learner.predict_one(train[0][0])  # the cache must follow the model when it learns again
    learner.learn(batch_of(t, train[300:]))
    test = fit(mixed_rows(label_type, 200, seed=2, colors=("red", "green", "blue", "unseen")))
    table = batch_of(t, test)
    want = learner.predictions(table)
    got = [learner.predict_one(x) for x, _ in test]
    if label_type == "binary":
        p = np.array([probs[True] for _, probs in got])
        np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-15)
        assert [v for v, _ in got] == (want > 0.5).tolist()
        assert all(math.isclose(probs[True] + probs[False], 1.0) for _, probs in got)
        assert learner.path == ("batch" if "x1" in features else "per_example")
        if learner.path == "batch":
            assert first != learner.predict_one(train[0][0])
    elif label_type == "multiclass":
        np.testing.assert_allclose([probs[v] for v, probs in got], want, rtol=1e-12)
        assert all(v in ("a", "b", "c") for v, _ in got)
    else:
        np.testing.assert_allclose([v for v, _ in got], want, rtol=1e-12)
        assert all(probs is None for _, probs in got)


def test_predict_one_refuses_bad_features_with_what_is_allowed() -> None:
    from ct_stream.topology import Topology

    t = Topology(name="t", events_topic="t.e", labels_topic="t.l", features=ALL_KINDS, label_type="binary")
    learner = make_learner(t)
    good = {"x1": 1, "k": 3.0, "flag": False, "color": "red", "extra": "ignored"}
    assert learner.predict_one(good)[0] is False  # int for float and integral float for int are fine
    cases = [({"k": 1, "flag": True, "color": "a"}, "features.x1: got 'missing'; allowed: a finite number"),
             ({**good, "x1": float("nan")}, "features.x1: got nan; allowed: a finite number"),
             ({**good, "x1": True}, "features.x1: got True; allowed: a finite number"),
             ({**good, "k": 2.5}, "features.k: got 2.5; allowed: an integer"),
             ({**good, "flag": 1}, "features.flag: got 1; allowed: true or false"),
             ({**good, "color": 3}, "features.color: got 3; allowed: a string (feature 'color' is declared 'str')")]
    for features, message in cases:
        with pytest.raises(LearnError, match=message.replace("(", r"\(").replace(")", r"\)")):
            learner.predict_one(features)
    with pytest.raises(LearnError, match="features: got 'list'; allowed: a dict"):
        learner.predict_one([1, 2])  # type: ignore[arg-type]


def test_doctests() -> None:
    import doctest

    import ct_stream.learn.online
    import ct_stream.metrics
    import ct_stream.serving.routing

    for module in (ct_stream.serving.routing, ct_stream.metrics,
                   ct_stream.learn.online):  # online: predict_one's examples
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
