"""Freshness: from a label's production until a serving node answers with a version that learned it.

    python loadtest/freshness.py [--rate 50000] [--seconds 30] [--online-every 1s] [--linger-ms 50]
                                 [--roles all|split] [--bootstrap HOST:PORT]

On the embedded broker (or --bootstrap), three processes share the machine's cores:

1. this process produces events at ``--rate`` events/s in real time (10 float features,
   event time = wall time) and labels for 70% of them, 0.1-2 s after their event; the
   concept drifts continuously (the true weight vector turns a full circle every 20 s),
   so a newer online model is better on recent data than an older one, as in a live
   continuous-training deployment;
2. ``ct-stream run --role all --insecure`` (a subprocess; with ``--roles split``, one
   ``--role joiner`` and one ``--role trainer`` process): joiner and trainer; the
   online model is offered to the gate every ``--online-every`` and published when the
   gate approves it (the default gate: a paired test at alpha 0.05 on the 5,000 most
   recent examples);
3. a serving node in this process: a :class:`~ct_stream.serving.ModelSubscriber`, and a
   thread that waits for each newly loaded version and records when ``predict`` first
   answers with it.

The producer of step 1 is the application's: it batches for ``--linger-ms`` (default
50 ms; ct-stream's own producers use librdkafka's 5 ms). On the embedded broker this
matters beyond the producer: Tansu's cost per fetch grows with the number of record
batches stored in the partition, so events and labels produced in 5 ms batches make
the broker's CPU climb through the run (measured here at 50k events/s: from 25% to 66%
of a core over 60 s, against 13-25% with 50 ms batches) and take the second core from
the joiner, which then falls behind (docs/brokers.md, docs/performance.md). The linger is
part of the measured freshness: a label's time starts at its ``produce()`` call.
Every 5 s the run samples the CPU time of the broker (embedded only), the loop
processes and itself, and prints it at the end.

Afterwards the examples topic is read back: each joined example's message offset, with
each published version's lineage (the examples offsets it learned up to), gives the
first version that learned each label. Freshness of a label = the time ``predict`` first
answered with that version minus the time the label was produced. Prints p50/p90/p99
and the max over all labels whose examples were learned by some version (goal, issue 5:
p99 <= 3 s at 50k examples/s), the events rate achieved, and how many labels no version
had learned when the run ended (the tail of the run; reported, not hidden).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.kafka.broker import EmbeddedBroker  # noqa: E402
from ct_stream.kafka.clients import DeliveryTracker, make_producer, produce_retrying, read_to_end  # noqa: E402
from ct_stream.records import Event, Label, decode_examples, encode_event, encode_label  # noqa: E402
from ct_stream.runtime.models import read_updates  # noqa: E402
from ct_stream.serving import ModelSubscriber  # noqa: E402
from ct_stream.topology import load_topology  # noqa: E402

N_FEATURES = 10
PERIOD = 20.0  # seconds for the true weight vector to turn a full circle


class CpuSampler:
    """CPU time of some processes every ``every`` seconds, from ``/proc`` (Linux), in a
    thread: :attr:`shares` holds, per name, the percent of one core each used in each
    interval. A process that is gone (or no ``/proc``) just stops being sampled."""

    def __init__(self, pids: dict[str, int], every: float = 5.0) -> None:
        self.pids, self.every = pids, every
        self.shares: dict[str, list[float]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    @staticmethod
    def _cpu_seconds(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.every + 1)

    def _run(self) -> None:
        last = {name: self._cpu_seconds(pid) for name, pid in self.pids.items()}
        at = time.monotonic()
        while not self._stop.wait(self.every):
            now = time.monotonic()
            for name, pid in self.pids.items():
                used, before = self._cpu_seconds(pid), last[name]
                if used is not None and before is not None:
                    self.shares[name].append(100.0 * (used - before) / (now - at))
                last[name] = used
            at = now


def topology_source(name: str, data_dir: str, online_every: str, commit_interval: str = "250ms") -> str:
    features = ", ".join(f'"f{i}": "float"' for i in range(N_FEATURES))
    return textwrap.dedent(f"""
        from ct_stream.topology import Topology

        topology = Topology(
            name={name!r}, events_topic={name + '.events'!r}, labels_topic={name + '.labels'!r},
            features={{{features}}}, label_type="binary", partitions=3,
            join={{"max_label_delay": "3s", "grace": "500ms", "commit_interval": {commit_interval!r}}},
            retrain={{"every_examples": None, "every_seconds": None, "on_drift": False, "data_dir": {data_dir!r}}},
            publish={{"online_every": {online_every!r}, "artifact_dir": {data_dir!r}}},
        )
        """)


def schedule(rate: float, seconds: float, seed: int = 7) -> tuple[list[tuple[float, str, int]], list[list[float]],
                                                                 list[bool]]:
    """The plan ``[(due offset in s, kind, event number)]`` in due order, the feature rows
    and the labels. Event ``k`` is due at ``k / rate``; its label (70% of events) 0.1-2 s
    later. The label is drawn from a logistic model whose weight vector turns a full
    circle every ``PERIOD`` seconds of event time."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    x = rng.normal(size=(n, N_FEATURES))
    a, b = np.zeros(N_FEATURES), np.zeros(N_FEATURES)
    a[:5], b[5:] = 1.0, 1.0
    theta = 2 * math.pi * t / PERIOD
    w = np.cos(theta)[:, None] * a + np.sin(theta)[:, None] * b
    p = 1.0 / (1.0 + np.exp(-2.0 * np.einsum("ij,ij->i", x, w)))
    y = rng.random(n) < p
    labelled = np.flatnonzero(rng.random(n) < 0.7)
    delay = rng.uniform(0.1, 2.0, len(labelled))
    plan = [(float(d), "event", k) for k, d in enumerate(t)]
    plan += [(float(t[k] + d), "label", int(k)) for k, d in zip(labelled, delay)]
    plan.sort(key=lambda r: r[0])
    return plan, x.tolist(), y.tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50_000, help="events per second (default 50000)")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to produce (default 30)")
    ap.add_argument("--online-every", default="1s", help="publish.online_every of the topology (default 1s)")
    ap.add_argument("--roles", choices=("all", "split"), default="all",
                    help="all: one `ct-stream run --role all` process (default); split: a joiner process and a "
                         "trainer process")
    ap.add_argument("--commit-interval", default="250ms", help="join.commit_interval of the topology (default 250ms)")
    ap.add_argument("--linger-ms", type=int, default=50,
                    help="linger.ms of the producer of events and labels (default 50; see above)")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    if args.linger_ms < 0:
        ap.error(f"--linger-ms must be >= 0, got {args.linger_ms}")
    name = f"fresh-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="ct-fresh-"))
    topo_path = work / "topology.py"
    topo_path.write_text(topology_source(name, str(work / "data"), args.online_every, args.commit_interval))
    topology = load_topology(topo_path)
    schema = topology.record_schema

    print(f"generating {int(args.rate * args.seconds):,} events ...", flush=True)
    plan, feats, labels = schedule(args.rate, args.seconds)
    names = list(topology.features)

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    roles = ["all"] if args.roles == "all" else ["joiner", "trainer"]
    loops = [subprocess.Popen([sys.executable, "-m", "ct_stream.cli", "run", str(topo_path), "--role", role,
                               "--insecure", "--bootstrap", bootstrap, "--data-dir", str(work / "data"),
                               "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(work / f"{role}.log", "wb"))
             for role in roles]
    answered: dict[int, float] = {}  # version -> when predict first answered with it
    stop = threading.Event()
    sub = ModelSubscriber(bootstrap, topology, signing_key=None, insecure=True).start()
    probe = dict(zip(names, [0.0] * len(names)))

    def serve() -> None:
        want = 1
        while not stop.is_set():
            if not sub.wait_for_version(want, timeout=0.2):
                continue
            answer = sub.predict(probe)
            answered.setdefault(answer.version, time.time())
            want = answer.version + 1

    server = threading.Thread(target=serve, name="serving-probe", daemon=True)
    server.start()
    produced_at: dict[str, float] = {}
    tracker = DeliveryTracker()
    producer = make_producer(bootstrap, {"linger.ms": args.linger_ms}, on_delivery=tracker)
    watched = {"this process (producer, serving node)": os.getpid(), **{f"{role} process": loop.pid
                                                                         for role, loop in zip(roles, loops)}}
    if broker is not None and broker.pid is not None:
        watched["broker"] = broker.pid
    cpu = CpuSampler(watched)
    # encoded before the clock starts, so producing costs this process little CPU (event
    # time is the schedule's offset from a fixed epoch; the join runs on event time)
    epoch = 1_700_000_000.0
    encoded = []
    for due, kind, n in plan:
        i = f"e{n}"
        if kind == "event":
            encoded.append((due, topology.events_topic, i,
                            encode_event(Event(i, epoch + due, dict(zip(names, feats[n])), None, None), schema)))
        else:
            encoded.append((due, topology.labels_topic, i, encode_label(Label(i, epoch + due, labels[n]), schema)))
    del plan, feats
    print(f"producing for {args.seconds:.0f} s ...", flush=True)
    try:
        time.sleep(3.0)  # the loop subprocess joins its group (wall-clock start-up, not measured)
        start = time.time()
        cpu.start()
        labels_topic = topology.labels_topic
        for k, (due, topic, i, value) in enumerate(encoded):
            now = time.time() - start
            if due > now + 0.002:  # pacing the producer to the schedule
                producer.poll(0)
                time.sleep(due - now)
            if topic is labels_topic:
                produced_at[i] = time.time()
            produce_retrying(producer, topic, value, i.encode())
            if k % 2000 == 0:
                producer.poll(0)
        producer.flush(60)
        if tracker.failed:  # a label that never reached the broker would count as "not learned"
            raise SystemExit(f"{tracker.failed} records were not delivered: {tracker.first_error}")
        produced_for = time.time() - start
        late = produced_for - args.seconds - 2.0
        print(f"produced {len(encoded):,} records in {produced_for:.1f} s (schedule {args.seconds + 2.0:.1f} s; "
              f"{'behind by %.1f s' % late if late > 0.5 else 'on time'}); "
              f"{int(args.rate * args.seconds / max(produced_for - 2.0, 1e-9)):,} events/s", flush=True)
        deadline = time.time() + 15  # let the last labels expire, join and publish
        while time.time() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        cpu.stop()
        for loop in loops:
            loop.send_signal(signal.SIGTERM)
        for loop in loops:
            try:
                loop.wait(30)
            except subprocess.TimeoutExpired:
                loop.kill()
        sub.close()
        server.join(5)

    # which examples message holds each label's example, and which versions learned what
    where: dict[str, tuple[int, int]] = {}
    written: dict[str, float] = {}  # the examples message's timestamp: when the joiner produced it
    for batch in read_to_end(bootstrap, topology.examples_topic, {p: 0 for p in range(topology.partitions)}):
        for m in batch:
            table = decode_examples(m.value(), schema)
            for i, outcome in zip(table.column("id").to_pylist(), table.column("outcome").to_pylist()):
                if outcome != "expired" and i not in where:
                    where[i] = (m.partition(), m.offset())
                    written[i] = m.timestamp()[1] / 1000.0
    lineage: dict[int, dict[int, int]] = {}
    for entry in read_updates(bootstrap, topology, None, insecure=True):
        if entry.update is not None and entry.problem is None:
            lineage[entry.update.version] = {int(p): o for p, o in entry.update.lineage["examples_offsets"].items()}
    if broker is not None:
        broker.stop()
    versions = sorted(v for v in lineage if v in answered)
    fresh, when, joined, unlearned = [], [], [], 0
    for i, t_label in produced_at.items():
        pos = where.get(i)
        if pos is None:
            unlearned += 1
            continue
        p, offset = pos
        v = next((v for v in versions if lineage[v].get(p, 0) > offset), None)
        if v is None:
            unlearned += 1
            continue
        fresh.append(answered[v] - t_label)
        when.append(t_label - start)
        joined.append(written[i] - t_label)
    print(f"versions published {len(lineage)}, answered by the serving node {len(answered)}; "
          f"labels {len(produced_at):,}: {len(fresh):,} learned by a served version, {unlearned:,} not "
          f"(joined too late for the last version, or not joined)")
    if not fresh:
        print("no freshness measured; the workers' logs are in", work)
        return 1
    f = np.array(fresh)
    p50, p90, p99 = np.percentile(f, [50, 90, 99])
    print(f"freshness (label produced -> served by a version that learned it): p50 {p50:.2f} s, "
          f"p90 {p90:.2f} s, p99 {p99:.2f} s, max {f.max():.2f} s (goal p99 <= 3 s)")
    # through the run: a loop that keeps up has the same freshness in every slice
    # (the joiner's share: label produced -> its example written to the examples topic)
    at, jt = np.array(when), np.array(joined)
    for lo in range(0, int(math.ceil(at.max())), 5):
        sel = (at >= lo) & (at < lo + 5)
        part = f[sel]
        if part.size:
            q50, q99 = np.percentile(part, [50, 99])
            j50, j99 = np.percentile(jt[sel], [50, 99])
            print(f"  labels produced {lo:3d}-{lo + 5:3d} s into the run: {part.size:8,}  p50 {q50:5.2f} s  "
                  f"p99 {q99:5.2f} s   (joined and written: p50 {j50:5.2f} s  p99 {j99:5.2f} s)")
    print(f"  CPU, % of one core in each 5 s from the start of producing (producer linger.ms {args.linger_ms}):")
    for who, shares in cpu.shares.items():
        print(f"    {who:38s} " + " ".join(f"{x:3.0f}" for x in shares))
    first = min(answered.values())
    print("  versions answered at (s into the run): " + " ".join(f"{answered[v] - start:.1f}" for v in versions)
          if first else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
