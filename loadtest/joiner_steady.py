"""Where one partition's joiner spends its time, second by second, as its state fills up.

    python loadtest/joiner_steady.py [--rate 16667] [--seconds 24] [--commit-every 0.25]

Pure: no broker. Synthetic events (10 float features) at ``--rate`` events/s of event
time for one partition (16,667 is a third of the freshness benchmark's 50k/s), 70%
labelled 0-2 s later, replayed through one ``PartitionJoiner`` in micro-batches of
``--commit-every`` seconds of event time (the freshness topology: ``max_label_delay``
3 s, ``grace`` 500 ms). Each micro-batch runs what the joiner worker runs: decode, the
join, examples to Arrow messages, ``drain_encoded`` and the changelog records (a
snapshot when one is due). Prints microseconds per input record for each stage, per
second of event time, and the state size: the cost per record rises until the done
memory reaches its horizon (``2 * max_label_delay + grace``) and the first snapshot
comes, which is when the freshness benchmark's joiner falls behind at 50k events/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.join.arrow import example_messages  # noqa: E402
from ct_stream.join.changelog import ChangelogWriter  # noqa: E402
from ct_stream.join.joiner import Input, PartitionJoiner  # noqa: E402
from ct_stream.records import decode_events, decode_labels  # noqa: E402
from ct_stream.runtime import tune_gc  # noqa: E402
from ct_stream.synthetic import generate  # noqa: E402
from ct_stream.topology import Topology  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=16_667, help="events per second of event time (default 16667)")
    ap.add_argument("--seconds", type=int, default=24, help="seconds of event time (default 24)")
    ap.add_argument("--commit-every", type=float, default=0.25, help="micro-batch, s of event time (default 0.25)")
    args = ap.parse_args()
    tune_gc()  # as `ct-stream run` does
    t = Topology(name="steady", events_topic="steady.events", labels_topic="steady.labels",
                 features={f"f{i}": "float" for i in range(10)}, label_type="binary", partitions=1,
                 join={"max_label_delay": "3s", "grace": "500ms"})
    data = generate(t, args.rate * args.seconds, seed=3, events_per_second=args.rate, label_fraction=0.7,
                    max_delay=2.0)
    records = list(data.in_time_order())
    schema = t.record_schema
    joiner, writer = PartitionJoiner(0, t.join), ChangelogWriter(0)
    per_second: dict[int, Counter[str]] = defaultdict(Counter)
    counts: Counter[int] = Counter()
    step = max(1, int(args.rate * 1.7 * args.commit_every))  # events and labels per micro-batch
    for start in range(0, len(records), step):
        chunk = records[start:start + step]
        second = int(start / (args.rate * 1.7))
        t0 = time.perf_counter()
        events, _ = decode_events([v for k, _, v in chunk if k == "event"], schema)
        labels, _ = decode_labels([v for k, _, v in chunk if k == "label"], schema)
        t1 = time.perf_counter()
        it_e, it_l = iter(events), iter(labels)
        inputs = [Input(k, next(it_e) if k == "event" else next(it_l), start + n) for n, (k, _, _) in enumerate(chunk)]
        t2 = time.perf_counter()
        out = joiner.process(inputs)
        t3 = time.perf_counter()
        list(example_messages(out.rows, schema))
        t4 = time.perf_counter()
        changes = joiner.drain_encoded()
        t5 = time.perf_counter()
        size = joiner.pending + joiner.remembered
        snapshot = writer.snapshot_due(len(changes), size)
        writer.records(changes, size, joiner.snapshot_encoded)
        t6 = time.perf_counter()
        c = per_second[second]
        c["decode"] += t1 - t0
        c["inputs"] += t2 - t1
        c["join"] += t3 - t2
        c["arrow"] += t4 - t3
        c["drain"] += t5 - t4
        c["snapshot" if snapshot else "changelog"] += t6 - t5
        counts[second] += len(chunk)
    print("us per input record, by second of event time:")
    stages = ("decode", "inputs", "join", "arrow", "drain", "changelog", "snapshot")
    print("  s   " + "".join(f"{s:>10}" for s in ("total",) + stages))
    for second in sorted(per_second):
        c, n = per_second[second], counts[second]
        print(f"{second:3d}   {sum(c.values()) * 1e6 / n:10.2f}" + "".join(f"{c[s] * 1e6 / n:10.2f}" for s in stages))
    print(f"state at the end: {joiner.pending:,} pending, {joiner.remembered:,} remembered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
