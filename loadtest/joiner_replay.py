"""The joiner worker's native data path in memory, stage by stage: for counting instructions.

    python loadtest/joiner_replay.py [--events 50000] [--batch 5000]
    valgrind --tool=callgrind --callgrind-out-file=cg.out python loadtest/joiner_replay.py
    callgrind_annotate --inclusive=yes cg.out | grep -E '__pymethod_items_into__|__pymethod_process_merged__|example_columns'

No broker. The full loop's input (``loadtest/trainer_throughput.py``: 10 float features,
70% labelled up to 5 s later, 5,000 events a second of event time, seed 3) for one
partition, replayed through what the worker runs on its native path, ``--batch`` records
at a time: ``Decoder.items_into`` (the messages' JSON into a ``Merger``),
``NativePartitionJoiner.process_merged`` (the merger's records released and joined), the
examples' Arrow messages and the change log (``drain_encoded`` and the changelog writer). The messages are stand-ins
with the ``value()`` and ``offset()`` that the decoder reads. The input ends as the full
loop's does, with an end-of-input event and label a day of event time later, whose
watermark expires every event still pending (as negatives) and forgets the done memory.

Prints each stage's seconds and records/s. On this 2-core VM the same work takes up to
twice as long from one minute to the next (docs/performance.md), so comparing two
builds by time takes many alternations. Under ``valgrind --tool=callgrind`` the count of
instructions each native entry point runs is the same from run to run, whatever the
machine is doing: a change to the native code is measured by running this once on each
build and comparing the entry points' inclusive counts (the generation of the input is
counted too, before the stages, and is the same in both runs). Instruction counts do not
show cache misses, which matter to the join's hash map (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.join.arrow import example_messages  # noqa: E402
from ct_stream.join.changelog import ChangelogWriter  # noqa: E402
from ct_stream.join.joiner import NativePartitionJoiner  # noqa: E402
from ct_stream.native import module as native  # noqa: E402
from ct_stream.records import Event, Label, encode_event, encode_label  # noqa: E402
from ct_stream.runtime import tune_gc  # noqa: E402
from ct_stream.synthetic import generate  # noqa: E402
from ct_stream.topology import Topology  # noqa: E402
from joiner_steady import _Message  # noqa: E402  (this folder: the decoder's view of a polled message)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000, help="events to replay (default 50,000)")
    ap.add_argument("--batch", type=int, default=5_000,
                    help="records (events and labels) per step, about a poll's share of one partition (default 5,000)")
    args = ap.parse_args()
    if native is None:
        ap.error("needs ct_stream._native (built with cargo: docs/native.md)")
    tune_gc()  # as `ct-stream run` does
    t = Topology(name="replay", events_topic="replay.events", labels_topic="replay.labels",
                 features={f"f{i}": "float" for i in range(10)}, label_type="binary", partitions=1,
                 join={"max_label_delay": "10s", "grace": "2s", "commit_interval": "1s"})
    data = generate(t, args.events, seed=3, events_per_second=5000, label_fraction=0.7, max_delay=5.0)
    records = [(kind, value) for kind, _, value in data.in_time_order()]
    end_ts = 1_700_000_000.0 + args.events / 5000 + 86_400.0  # the generator starts at 1.7e9 (as trainer_throughput)
    end = Event("end-of-input", end_ts, {name: 0.0 for name in t.features})
    records += [("event", encode_event(end, t.record_schema)),
                ("label", encode_label(Label("end-of-input", end_ts, False), t.record_schema))]
    # the messages of each step, made before anything is measured
    steps = []
    for start in range(0, len(records), args.batch):
        chunk = records[start:start + args.batch]
        steps.append({kind: [_Message(v, start + i) for i, (k, v) in enumerate(chunk) if k == kind]
                      for kind in ("event", "label")})
    del data, records
    schema = t.record_schema
    decoder, names = schema._native_decoder, tuple(schema.features)
    clock = time.monotonic
    merger = native.Merger(t.join.grace, t.join.idle_timeout, clock)
    joiner = NativePartitionJoiner(0, t.join, clock=clock)
    writer = ChangelogWriter(0)
    took: Counter[str] = Counter()
    n_records = n_rows = 0
    for step in steps:
        t0 = time.perf_counter()
        for kind, msgs in step.items():
            _, missing = decoder.items_into(merger, kind, msgs, kind == "event")
            if missing:
                raise SystemExit(f"{len(missing)} records were left to the Python decoder: not the common form")
            n_records += len(msgs)
        t1 = time.perf_counter()
        out, _, _ = joiner.process_merged(merger, names)
        t3 = time.perf_counter()
        for _ in example_messages(out.rows, schema):
            pass
        t4 = time.perf_counter()
        writer.records(joiner.drain_encoded(writer.max_bytes), joiner.pending + joiner.remembered,
                       lambda: joiner.snapshot_encoded(writer.max_bytes))
        t5 = time.perf_counter()
        n_rows += len(out.rows)
        took.update(decode=t1 - t0, join=t3 - t1, arrow=t4 - t3, changelog=t5 - t4)
    total = sum(took.values())
    print(f"{n_records:,} records ({n_rows:,} examples) in {total:.3f} s = {n_records / total:,.0f} records/s")
    for stage, seconds in took.items():
        print(f"  {stage:>10}: {seconds:.3f} s ({seconds / total:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
