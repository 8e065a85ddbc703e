"""The retrain subprocess: train a fresh model on a snapshot, write its state.

``python -m ct_stream.runtime.retrain JOB_DIR`` reads ``JOB_DIR/job.pkl`` (written by the
trainer: the pickled topology, the fresh learner's state, the snapshot path and its
sha256), checks the snapshot's hash, learns every row in order, and writes the trained
learner's state to ``JOB_DIR/result.bin`` atomically, then ``JOB_DIR/result.json`` with
rows and seconds. Exit code 0 on success; on failure the reason is on stderr (the
trainer's log of the job) and ``result.bin`` is not written.

It runs in its own process so the trainer's online path keeps ingesting while it trains
(2 cores: one each). The job file is pickled by the trainer itself, in a directory only it
writes, and read by this child only.
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import orjson

__all__ = ["main", "run_job"]

_BATCH = 2000


def run_job(job_dir: Path) -> dict[str, float]:
    """Run the job in ``job_dir``; return ``{"rows": ..., "seconds": ...}``."""
    from ct_stream.learn.online import OnlineLearner
    from ct_stream.runtime.checkpoint import write_atomic
    from ct_stream.window import read_snapshot

    started = time.perf_counter()
    job = pickle.loads((job_dir / "job.pkl").read_bytes())
    topology = job["topology"]
    learner = OnlineLearner.from_state(job["fresh_state"], topology)
    table = read_snapshot(Path(job["snapshot_path"]), job["snapshot_sha256"])
    for start in range(0, table.num_rows, _BATCH):
        learner.learn(table.slice(start, _BATCH))
    write_atomic(job_dir / "result.bin", learner.state())
    summary = {"rows": float(table.num_rows), "seconds": time.perf_counter() - started}
    write_atomic(job_dir / "result.json", orjson.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m ct_stream.runtime.retrain JOB_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ct_stream.runtime.retrain JOB_DIR", file=sys.stderr)
        return 2
    try:
        summary = run_job(Path(args[0]))
    except Exception as e:  # noqa: BLE001 - the parent reads the reason from our log
        print(f"retrain failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"retrain done: {summary['rows']:.0f} rows in {summary['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
