"""The embedded broker's CPU while a tailing consumer reads a growing topic, by producer batching.

    python loadtest/broker_fetch_growth.py [--rate 50000] [--seconds 40] [--lingers 5,50]

On the embedded broker (Tansu, memory storage), for each ``linger.ms`` in turn, on a
fresh 3-partition topic: this process produces ``--rate`` records/s of 300 bytes in real
time for ``--seconds``, while a consumer in a subprocess tails the topic (``assign()``
from offset 0, ``consume(num_messages=10000)``), as ct-stream's joiner tails the
events and labels topics. Every 5 s the broker's CPU time is sampled from ``/proc``.

What it shows (docs/brokers.md): Tansu's cost per fetch grows with the number of record
batches stored in the partition, so at a constant rate the broker's CPU climbs through
the run when the producer sends small batches, and stays low with larger ones. The
first linger is the baseline; the script prints each run's CPU per 5 s, and the ratio of
each run's mean broker CPU to the baseline's, measured in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_stream.kafka.broker import EmbeddedBroker  # noqa: E402
from ct_stream.kafka.clients import (TopicPartition, TopicSpec, ensure_topics, make_consumer,  # noqa: E402
                                    make_producer, produce_retrying)
from freshness import CpuSampler  # noqa: E402  (this folder: the script's own)

PARTITIONS = 3


def tail(bootstrap: str, topic: str, target: mp.sharedctypes.Synchronized,
         counted: mp.sharedctypes.Synchronized) -> None:
    """Consume ``topic`` from the start until ``target`` (set by the producer when it is done,
    -1 until then) records are read, or 60 s after the target is set."""
    consumer = make_consumer(bootstrap, None)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    n, deadline = 0, None
    while True:
        n += len(consumer.consume(num_messages=10_000, timeout=0.1))
        want = target.value
        if want >= 0:
            deadline = deadline or time.monotonic() + 60.0
            if n >= want or time.monotonic() > deadline:
                break
    consumer.close()
    counted.value = n


def run(bootstrap: str, broker_pid: int, linger: int, rate: int, seconds: float) -> list[float]:
    """Produce and tail one fresh topic; the broker's CPU (% of a core) in each 5 s."""
    topic = f"growth-{linger}-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS)])
    target, counted = mp.Value("q", -1), mp.Value("q", 0)
    reader = mp.Process(target=tail, args=(bootstrap, topic, target, counted))
    reader.start()
    producer = make_producer(bootstrap, {"linger.ms": linger})
    value, step = b"x" * 300, 500
    cpu = CpuSampler({"broker": broker_pid})
    cpu.start()
    start = time.monotonic()
    k = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + k / rate
        if now < due:
            time.sleep(due - now)
        for j in range(step):
            produce_retrying(producer, topic, value, str(k + j).encode())
        k += step
        producer.poll(0)
    cpu.stop()
    shares = cpu.shares["broker"]
    left = producer.flush(60)
    target.value = k
    reader.join(90)
    if left:
        raise SystemExit(f"linger.ms {linger}: {left} records not delivered")
    print(f"linger.ms {linger:3d}: produced {k:,}, consumed {counted.value:,}; broker CPU, % of a core per 5 s: "
          + " ".join(f"{x:3.0f}" for x in shares), flush=True)
    return shares


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=50_000, help="records per second (default 50000)")
    ap.add_argument("--seconds", type=float, default=40.0, help="seconds of producing per linger (default 40)")
    ap.add_argument("--lingers", default="5,50",
                    help="comma-separated linger.ms values, the first the baseline (default 5,50)")
    args = ap.parse_args()
    try:
        lingers = [int(x) for x in args.lingers.split(",")]
    except ValueError:
        ap.error(f"--lingers takes comma-separated integers, got {args.lingers!r}")
    if not lingers or min(lingers) < 0 or args.rate <= 0 or args.seconds < 10:
        ap.error("--lingers >= 0, --rate > 0 and --seconds >= 10 (two 5-second samples at least)")
    broker = EmbeddedBroker().start()
    try:
        assert broker.pid is not None
        means = [statistics.fmean(run(broker.bootstrap, broker.pid, x, args.rate, args.seconds)) for x in lingers]
    finally:
        broker.stop()
    for linger, mean in zip(lingers, means):
        print(f"linger.ms {linger:3d}: mean broker CPU {mean:5.1f}% of a core, {mean / means[0]:.2f}x the "
              f"linger.ms {lingers[0]} baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
