"""The Topology: validation on load, one clear error per bad field, `ct-stream validate`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ct_stream.errors import TopologyError, TopologyLoadError
from ct_stream.topology import JoinSpec, Topology, load_topology, parse_bytes, parse_duration

REPO = Path(__file__).resolve().parents[1]
BASE = dict(name="t", events_topic="t.events", labels_topic="t.labels",
            features={"x": "float", "n": "int", "flag": "bool", "c": "str"}, label_type="binary")


def make(**changes):
    return Topology(**{**BASE, **changes})


def test_defaults_and_derived_names():
    t = make()
    assert (t.examples_topic, t.models_topic, t.dlq_topic, t.state_topic) == (
        "t.examples", "t.models", "t.dlq", "t.joiner-state")
    assert t.join.max_label_delay == 3600.0 and t.join.timeout_policy == "negative"
    assert t.join.default_label is False  # binary + negative: False unless given
    assert t.model_name == "t"
    assert t.record_schema.features == BASE["features"]


def test_sections_accept_dicts_and_parse_units():
    t = make(join={"max_label_delay": "2h", "grace": "250ms", "commit_interval": 0.5},
             retrain={"every_seconds": None, "window_bytes": "64MiB"}, publish={"inline_max_bytes": "500KB"})
    assert t.join.max_label_delay == 7200.0 and t.join.grace == 0.25 and t.join.commit_interval == 0.5
    assert t.retrain.every_seconds is None and t.retrain.window_bytes == 64 * 1024**2
    assert t.publish.inline_max_bytes == 500_000
    assert isinstance(make(join=JoinSpec(grace=5)).join, JoinSpec)


@pytest.mark.parametrize("changes, field", [
    (dict(name="bad name!"), "name"),
    (dict(events_topic=""), "events_topic"),
    (dict(labels_topic="t.events"), "labels_topic"),
    (dict(features={}), "features"),
    (dict(features={"x": "double"}), "features.x"),
    (dict(label_type="binary_classification"), "label_type"),
    (dict(partitions=0), "partitions"),
    (dict(max_record_bytes="lots"), "max_record_bytes"),
    (dict(join={"grace": -1}), "join.grace"),
    (dict(join={"max_label_delay": "3 weeks"}), "join.max_label_delay"),
    (dict(join={"max_label_delay": 0}), "join.max_label_delay"),
    (dict(join={"timeout_policy": "ignore"}), "join.timeout_policy"),
    (dict(join={"max_pending": 0}), "join.max_pending"),
    (dict(join={"max_remembered": -1}), "join.max_remembered"),
    (dict(join={"default_label": 2}), "join.default_label"),
    (dict(join={"grase": 1}), "join.grase"),
    (dict(join=[1]), "join"),
    (dict(model={"estimator": 42}), "model.estimator"),
    (dict(drift={"concept_detector": "magic"}), "drift.concept_detector"),
    (dict(drift={"data_threshold": float("nan")}), "drift.data_threshold"),
    (dict(retrain={"on_drift": "yes"}), "retrain.on_drift"),
    (dict(retrain={"every_examples": -5}), "retrain.every_examples"),
    (dict(gate={"alpha": 1.0}), "gate.alpha"),
    (dict(gate={"min_samples": 10_000, "holdout_size": 1_000}), "gate.min_samples"),
    (dict(gate={"metric": "f1"}), "gate.metric"),
    (dict(publish={"inline_max_bytes": "2MB"}), "publish.inline_max_bytes"),
    (dict(serving={"canary_fraction": 1.5}), "serving.canary_fraction"),
    (dict(kafka={"bootstrap.servers": "x:9092"}), "kafka.bootstrap.servers"),
])
def test_an_invalid_field_gets_one_error_naming_it(changes, field):
    with pytest.raises(TopologyError) as info:
        make(**changes)
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}: got ") and "allowed: " in message


def test_the_gate_metric_must_fit_the_label_type():
    with pytest.raises(TopologyError, match="gate.metric: got 'mae'.*'log_loss', 'accuracy' for label_type 'binary'"):
        make(gate={"metric": "mae"})
    with pytest.raises(TopologyError, match="gate.metric: got 'log_loss'.*'mae', 'rmse' for label_type 'regression'"):
        make(label_type="regression", join={"timeout_policy": "drop"}, gate={"metric": "log_loss"})
    assert make(label_type="multiclass", join={"timeout_policy": "drop"}, gate={"metric": "accuracy"}).gate.metric \
        == "accuracy"
    assert make(label_type="regression", join={"timeout_policy": "drop"}, gate={"metric": "rmse"}).gate.metric == "rmse"


def test_default_label_is_required_for_regression_and_multiclass_negatives():
    with pytest.raises(TopologyError, match="join.default_label.*finite number"):
        make(label_type="regression")
    assert make(label_type="regression", join={"default_label": 0}).join.default_label == 0.0
    assert make(label_type="multiclass", join={"default_label": 3}).join.default_label == "3"
    assert make(label_type="regression", join={"timeout_policy": "drop"}).join.default_label is None


@pytest.mark.parametrize("label_type, head", [("binary", "LogisticRegression"), ("multiclass", "SoftmaxRegression"),
                                              ("regression", "LinearRegression")])
def test_default_model_covers_every_feature_kind_and_learns(label_type, head):
    t = make(label_type=label_type, join={"timeout_policy": "drop"})
    model = t.build_model()
    assert str(model).endswith(head)
    x = {"x": 0.5, "n": 3, "flag": True, "c": "de"}
    y = {"binary": True, "multiclass": "a", "regression": 1.5}[label_type]
    model.learn_one(x, y)
    out = model.predict_proba_one(x) if label_type != "regression" else model.predict_one(x)
    assert out is not None
    assert t.build_model() is not model


def test_a_regressor_is_refused_for_a_binary_label():
    from river import linear_model

    with pytest.raises(TopologyError, match="model.estimator.*classifier"):
        make(model={"estimator": linear_model.LinearRegression()}).build_model()


def test_parse_helpers():
    assert parse_duration("1.5h") == 5400.0
    assert parse_bytes("2KiB") == 2048
    with pytest.raises(TopologyError):
        parse_duration(True)
    with pytest.raises(TopologyError):
        parse_bytes(0)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "topo.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_load_topology_names_the_file_and_the_field(tmp_path):
    path = _write(tmp_path, """
        from ct_stream.topology import Topology
        topology = Topology(name="x", events_topic="a", labels_topic="b", features={"f": "float"},
                            label_type="binary", join={"timeout_policy": "sometimes"})
    """)
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.field == "join.timeout_policy" and str(path) in str(info.value)


@pytest.mark.parametrize("body, message", [
    ("x = 1\n", "defines no `topology`"),
    ("topology = {'name': 'x'}\n", "is a dict, expected"),
    ("import nonexistent_module_xyz\n", "failed to run: ModuleNotFoundError"),
])
def test_load_topology_explains_files_that_are_not_topologies(tmp_path, body, message):
    with pytest.raises(TopologyLoadError, match=message):
        load_topology(_write(tmp_path, body))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ct_stream.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_validate_command_passes_the_shipped_topologies():
    files = sorted(str(p) for p in (REPO / "topologies").glob("*.py"))
    assert files, "topologies/ must hold at least one example"
    result = _cli("validate", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") == len(files)


def test_validate_command_fails_a_broken_topology_naming_the_field(tmp_path):
    good = str(REPO / "topologies" / "clicks.py")
    bad = _write(tmp_path, """
        from ct_stream.topology import Topology
        topology = Topology(name="x", events_topic="a", labels_topic="b", features={"f": "float"},
                            label_type="binary", serving={"canary_fraction": 2})
    """)
    result = _cli("validate", good, str(bad))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ok   {good}")
    assert lines[1] == f"FAIL {bad}: serving.canary_fraction: got 2; allowed: a number with 0 <= x <= 1"
