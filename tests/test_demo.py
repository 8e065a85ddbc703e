"""`ct-stream demo`: the smoke pipeline through a real broker, every record accounted for,
then the joiner and trainer on the same records up to a verified published version."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

from ct_stream.runtime.smoke import SmokeReport, run_smoke
from ct_stream.topology import Topology


def _topology(name: str) -> Topology:
    return Topology(name=name, events_topic=f"{name}.events", labels_topic=f"{name}.labels",
                    features={"x": "float", "n": "int", "flag": "bool", "c": "str"}, label_type="binary",
                    partitions=3)


def test_smoke_pipeline_reads_back_validates_and_dead_letters_every_record(broker):
    report = run_smoke(_topology(broker.topic("smoke")), broker.bootstrap, n_events=3000, seed=7, bad_fraction=0.05)
    assert report.problems() == []
    assert report.consumed_events == report.produced_events == 3000
    assert sum(report.injected_bad.values()) > 50, "the run must include bad records"
    assert report.dead_letters == report.injected_bad == report.dlq_read_back
    assert report.valid_events == 3000 - sum(report.injected_bad.values())
    assert report.labelled_events == report.valid_labels == report.produced_labels


def test_smoke_pipeline_on_a_topic_that_already_holds_data_reads_only_its_own_run(broker):
    topology = _topology(broker.topic("rerun"))
    first = run_smoke(topology, broker.bootstrap, n_events=500, seed=1, bad_fraction=0.1)
    second = run_smoke(topology, broker.bootstrap, n_events=700, seed=2, bad_fraction=0.1)
    assert first.problems() == [] and second.problems() == []
    assert second.consumed_events == 700 and second.dlq_read_back == second.injected_bad


def test_report_names_every_way_the_counts_fail_to_add_up():
    report = SmokeReport(produced_events=10, produced_labels=5, injected_bad=Counter(bad_type=1),
                         consumed_events=9, consumed_labels=5, valid_events=8, valid_labels=5,
                         dead_letters=Counter(bad_type=1), dlq_read_back=Counter(), delivery_failures=2,
                         first_delivery_error="timed out")
    problems = report.problems()
    assert any(p.startswith("events: produced 10, read back 9") for p in problems)
    assert any(p.startswith("DLQ holds {}") for p in problems)
    assert any("2 produce requests failed; first error: timed out" in p for p in problems)
    assert not any(p.startswith("labels:") for p in problems)


def test_demo_command_runs_on_the_embedded_broker(embedded_broker):
    out = subprocess.run([sys.executable, "-m", "ct_stream.cli", "demo", "--events", "2000"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "embedded broker (Tansu, memory only) on 127.0.0.1:" in out.stdout
    assert "read back  2000 events" in out.stdout
    assert "smoke pipeline: ok, every record accounted for" in out.stdout
    # the joiner and trainer half: every valid event joined or expired, all learned, v1 verified
    joined = re.search(r"examples   joined (\d+), expired (\d+), corrections 0, .* late 0 \(3 of them the "
                       r"end-of-input markers\)", out.stdout)
    learned = re.search(r"learned    (\d+) examples", out.stdout)
    assert joined and learned, out.stdout
    valid = int(re.search(r"valid      (\d+) events", out.stdout).group(1))
    assert int(joined.group(1)) + int(joined.group(2)) == int(learned.group(1)) == valid + 3  # + end-of-input
    assert "published  v1 (promote, ct_stream.linear/1, inline; signature and sha256 verified" in out.stdout
    assert out.stdout.rstrip().endswith("demo: ok")


def test_demo_refuses_a_bad_event_count():
    out = subprocess.run([sys.executable, "-m", "ct_stream.cli", "demo", "--events", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--events: got 0; allowed: an integer >= 1" in out.stderr
