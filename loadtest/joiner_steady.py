"""Where one partition's joiner spends its time, second by second, as its state fills up.

    python loadtest/joiner_steady.py [--rate 16667] [--seconds 24] [--commit-every 0.25] [--joiner both]

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

``--joiner both`` (the default with the native data path) replays the same records
through ``PartitionJoiner`` (the Python state, the reference) and then
``NativePartitionJoiner`` (the state in Rust, fed the entries the native decoder packs
straight from the message bytes, as the worker does: its decode stage makes no
``Event`` or ``Label``) and ends with each stage's mean over the
steady state (from the done memory's horizon on) and the ratio native / reference,
measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.join.arrow import example_messages  # noqa: E402
from ct_stream.join.changelog import ChangelogWriter  # noqa: E402
from ct_stream.join.joiner import Input, NativePartitionJoiner, PartitionJoiner  # noqa: E402
from ct_stream.native import module as native  # noqa: E402
from ct_stream.records import decode_events, decode_labels  # noqa: E402
from ct_stream.runtime import tune_gc  # noqa: E402
from ct_stream.synthetic import generate  # noqa: E402
from ct_stream.topology import Topology  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=16_667, help="events per second of event time (default 16667)")
    ap.add_argument("--seconds", type=int, default=24, help="seconds of event time (default 24)")
    ap.add_argument("--commit-every", type=float, default=0.25, help="micro-batch, s of event time (default 0.25)")
    ap.add_argument("--joiner", choices=("both", "native", "reference"), default="both" if native else "reference",
                    help="which partition joiner: the state in Rust, the Python reference, or both in turn "
                         "(default: both with the native data path)")
    args = ap.parse_args()
    if args.joiner != "reference" and native is None:
        ap.error("--joiner native needs ct_stream._native (built with cargo: docs/native.md)")
    tune_gc()  # as `ct-stream run` does
    t = Topology(name="steady", events_topic="steady.events", labels_topic="steady.labels",
                 features={f"f{i}": "float" for i in range(10)}, label_type="binary", partitions=1,
                 join={"max_label_delay": "3s", "grace": "500ms"})
    data = generate(t, args.rate * args.seconds, seed=3, events_per_second=args.rate, label_fraction=0.7,
                    max_delay=2.0)
    records = list(data.in_time_order())
    stages = ("decode", "inputs", "join", "arrow", "drain", "changelog", "snapshot")
    classes = {"reference": [PartitionJoiner], "native": [NativePartitionJoiner],
               "both": [PartitionJoiner, NativePartitionJoiner]}[args.joiner]
    steady_from = int(2 * 3.0 + 0.5) + 1  # the first whole second past the done memory's horizon
    means = {}
    for cls in classes:
        print(f"{cls.__name__}: us per input record, by second of event time:")
        per_second, counts = replay(cls, t, records, args)
        print("  s   " + "".join(f"{s:>10}" for s in ("total",) + stages))
        for second in sorted(per_second):
            c, n = per_second[second], counts[second]
            print(f"{second:3d}   {sum(c.values()) * 1e6 / n:10.2f}" + "".join(f"{c[s] * 1e6 / n:10.2f}" for s in stages))
        n = sum(counts[s] for s in per_second if s >= steady_from)
        means[cls] = {s: sum(per_second[x][s] for x in per_second if x >= steady_from) * 1e6 / max(n, 1)
                      for s in stages}
        means[cls]["total"] = sum(means[cls].values())
    if len(classes) == 2:
        ref, nat = (means[c] for c in classes)
        print(f"steady state (second {steady_from} on), us per record: reference / native / ratio")
        for s in ("total",) + stages:
            ratio = f"{nat[s] / ref[s]:.2f}" if ref[s] else "-"
            print(f"  {s:>10} {ref[s]:8.2f} {nat[s]:8.2f} {ratio:>6}")
    return 0


class _Message:
    """The parts of a consumed message the native decoder reads."""

    __slots__ = ("_value", "_offset")

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset


def replay(cls: type, t: Topology, records: list, args: argparse.Namespace) -> tuple[dict[int, Counter[str]], Counter[int]]:
    """Replay ``records`` through a ``cls`` joiner as the worker does; seconds per stage, per second of event time."""
    schema = t.record_schema
    joiner, writer = cls(0, t.join), ChangelogWriter(0)
    # the native joiner takes the entries the native decoder packs from the messages (as the worker does)
    items = schema._native_decoder.items if cls is NativePartitionJoiner else None
    names = tuple(schema.features)
    per_second: dict[int, Counter[str]] = defaultdict(Counter)
    counts: Counter[int] = Counter()
    step = max(1, int(args.rate * 1.7 * args.commit_every))  # events and labels per micro-batch
    for start in range(0, len(records), step):
        chunk = records[start:start + step]
        second = int(start / (args.rate * 1.7))
        if items is not None:  # the worker's native path: the decoder packs the joiner's entries
            msgs = {kind: [_Message(v, start + n) for n, (k, _, v) in enumerate(chunk) if k == kind]
                    for kind in ("event", "label")}
            t0 = time.perf_counter()
            decoded = {kind: items(kind, msgs[kind], kind == "event")[0] for kind in ("event", "label")}
            t1 = time.perf_counter()
            it_e, it_l = iter(decoded["event"]), iter(decoded["label"])
            inputs = [(next(it_e) if k == "event" else next(it_l))[1] for k, _, _ in chunk]
            t2 = time.perf_counter()
            out = joiner.process(inputs, names)
            t3 = time.perf_counter()
        else:
            t0 = time.perf_counter()
            events, _ = decode_events([v for k, _, v in chunk if k == "event"], schema)
            labels, _ = decode_labels([v for k, _, v in chunk if k == "label"], schema)
            t1 = time.perf_counter()
            it_e, it_l = iter(events), iter(labels)
            inputs = [Input(k, next(it_e) if k == "event" else next(it_l), start + n)
                      for n, (k, _, _) in enumerate(chunk)]
            t2 = time.perf_counter()
            out = joiner.process(inputs)
            t3 = time.perf_counter()
        list(example_messages(out.rows, schema))
        t4 = time.perf_counter()
        changes = joiner.drain_encoded(writer.max_bytes)  # as the worker does
        t5 = time.perf_counter()
        size = joiner.pending + joiner.remembered
        snapshot = writer.snapshot_due(len(changes), size)
        writer.records(changes, size, functools.partial(joiner.snapshot_encoded, writer.max_bytes))
        t6 = time.perf_counter()
        c = per_second[second]
        c["decode"] += t1 - t0
        c["inputs"] += t2 - t1
        c["join"] += t3 - t2
        c["arrow"] += t4 - t3
        c["drain"] += t5 - t4
        c["snapshot" if snapshot else "changelog"] += t6 - t5
        counts[second] += len(chunk)
    print(f"state at the end: {joiner.pending:,} pending, {joiner.remembered:,} remembered")
    return per_second, counts


if __name__ == "__main__":
    sys.exit(main())
