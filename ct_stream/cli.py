"""The ``ct-stream`` command.

The only module that reads environment variables:

- ``CT_STREAM_BOOTSTRAP``: the default of ``--bootstrap`` (an existing Kafka cluster).
- ``CT_STREAM_CACHE_DIR``: where the Apache Kafka jars are cached (default
  ``~/.cache/ct-stream``).
- ``CT_STREAM_SIGNING_KEY``: the HMAC-SHA256 key the trainer signs model updates with.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from ct_stream import __version__
from ct_stream.errors import CtStreamError

_EPILOG = """\
commands:
  demo       run the pipeline end to end on the embedded broker (or --bootstrap)
  broker     run a broker in the foreground and print its bootstrap address
  run        run a topology's workers against Kafka (joiner, trainer, or both)
  serve      serve a topology's latest approved model over HTTP (hot-swapped from Kafka)
  models     list or show a topology's model versions; roll back to an older one
  validate   check topology files and say what is wrong, field by field

Point any command at an existing Kafka cluster with --bootstrap HOST:PORT (or
CT_STREAM_BOOTSTRAP); security settings (SASL/SSL) go in the topology's `kafka` dict.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ct-stream",
        description="Streaming micro-batch continuous training on Kafka: join delayed labels, "
                    "learn online, retrain, gate and publish signed model versions.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ct-stream {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run the pipeline end to end on the embedded broker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Start the embedded broker (unless --bootstrap is given), produce synthetic
            events and delayed labels for a topology (1%% of the events deliberately bad),
            read them back, validate them against the topology's record contract, send
            every bad record to <name>.dlq with its reason, and check that every record
            produced is accounted for.

            Then run the joiner and the trainer in this process on those records: join
            events with their labels (expired events become negatives), learn every
            example test-then-train, offer the online model to the gate, publish it to
            <name>.models signed with a key made for this run, and read it back
            verified. Exits 1 if anything does not add up."""))
    demo.add_argument("--topology", type=Path, default=None,
                      help="a topology file (default: the built-in 'demo' topology: 4 features, binary label)")
    demo.add_argument("--events", type=int, default=20_000, help="how many events to generate (default 20000)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data (default 0)")
    _bootstrap_arg(demo, "use this Kafka cluster instead of starting the embedded broker")

    broker = sub.add_parser(
        "broker", help="run a broker in the foreground and print its bootstrap address",
        description="Run a broker on 127.0.0.1 until Ctrl-C. The first line printed is "
                    "'... ready: bootstrap.servers=HOST:PORT'.")
    broker.add_argument("--kind", choices=("embedded", "apache"), default="embedded",
                        help="embedded: Tansu, memory only, starts in ~0.1 s (default); apache: a single KRaft "
                             "node of Apache Kafka from Maven Central (needs Java and mvn), data kept in --data-dir")
    broker.add_argument("--port", type=int, default=None, help="embedded only: the port (default: a free one)")
    broker.add_argument("--data-dir", type=Path, default=Path("ct-stream-kafka"),
                        help="apache only: the node's data directory, formatted on first use (default ./ct-stream-kafka)")

    run = sub.add_parser(
        "run", help="run a topology's workers against Kafka",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run one worker of TOPOLOGY until Ctrl-C or SIGTERM (then it commits and leaves
            its consumer group).

            --role joiner: join the events and labels topics into <name>.examples. Start
            several with the same topology (distinct --instance) to split the partitions.
            On a broker that isolates transactions (Apache Kafka) it runs exactly-once;
            elsewhere (the embedded broker) at-least-once with dedupe by id downstream;
            it logs which at start.

            --role trainer: learn <name>.examples online (test-then-train), watch for
            drift, retrain on snapshots of the recent window in a subprocess, gate every
            candidate against the champion, and publish approved versions to
            <name>.models, signed with the key in CT_STREAM_SIGNING_KEY (refuses to start
            without one unless --insecure). One trainer per model: it checkpoints its
            model with the offsets it learned up to under --data-dir and resumes there.

            --role all (the default): the joiner and the trainer in one process."""))
    run.add_argument("topology", type=Path, metavar="TOPOLOGY")
    run.add_argument("--role", choices=("all", "joiner", "trainer"), default="all",
                     help="which worker to run (default all: joiner and trainer in one process)")
    run.add_argument("--instance", default="0",
                     help="this process's stable name among the topology's joiners: its transactional.id is "
                          "<name>.joiner.<instance>, so a restart with the same name fences its predecessor "
                          "(default 0)")
    run.add_argument("--mode", choices=("auto", "exactly_once", "at_least_once"), default="auto",
                     help="joiner: auto (default): exactly-once if the broker isolates transactions, else "
                          "at-least-once")
    run.add_argument("--insecure", action="store_true",
                     help="trainer: publish UNSIGNED model updates when CT_STREAM_SIGNING_KEY is not set "
                          "(serving nodes must then also run insecure); for local experiments only")
    run.add_argument("--checkpoint-interval", type=float, default=5.0,
                     help="trainer: seconds between checkpoints of the model with its offsets (default 5); "
                          "after a crash at most this much learning is redone")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="trainer: checkpoint, snapshots and retrain jobs (default: the topology's "
                          "retrain.data_dir)")
    run.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus metrics on http://--metrics-host:PORT/metrics (0: a free port)")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    _bootstrap_arg(run, "the Kafka cluster (required)")

    serve = sub.add_parser(
        "serve", help="serve a topology's latest approved model over HTTP",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Serve TOPOLOGY's model over HTTP until Ctrl-C or SIGTERM. The model is read from
            <name>.models and hot-swapped as the trainer publishes versions; every update is
            verified with the key in CT_STREAM_SIGNING_KEY (refuses to start without one
            unless --insecure).

              POST /predict   {"features": {...}, "key": "...", "id": "..."} or {"requests": [...]}
              GET  /healthz   200 once a model is loaded, 503 before
              GET  /model     the serving version, its metrics and lineage
              GET  /metrics   Prometheus metrics

            Predictions of requests with an "id" are logged to the events topic with
            served_version and prediction (unless --no-log-predictions or the topology's
            serving.log_predictions is False), so the joiner joins them with their labels."""))
    serve.add_argument("topology", type=Path, metavar="TOPOLOGY")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: a free one)")
    serve.add_argument("--insecure", action="store_true",
                       help="accept UNSIGNED model updates when CT_STREAM_SIGNING_KEY is not set (development only)")
    serve.add_argument("--no-log-predictions", dest="log_predictions", action="store_false",
                       help="do not log served predictions to the events topic")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    _bootstrap_arg(serve, "the Kafka cluster (required)")

    models = sub.add_parser(
        "models", help="list or show model versions; roll back by hand",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Read TOPOLOGY's promotion topic (<name>.models) and verify every update with the
            key in CT_STREAM_SIGNING_KEY (without one, only the artifact hashes are checked).

              list      one line per version: action, parent, time, artifact, gate metric
              show V    version V's whole update: metrics, gate report, lineage
              rollback  publish a signed rollback to --to V (an older version still on the
                        topic): serving nodes and the trainer take its artifact as champion

            The topic is compacted by model name: older versions stay only until the broker
            compacts it. A canary carries the champion it runs beside, so --to can restore
            that champion even when its own update is gone."""))
    models.add_argument("action", choices=("list", "show", "rollback"))
    models.add_argument("topology", type=Path, metavar="TOPOLOGY")
    models.add_argument("version", type=int, nargs="?", metavar="V", help="show: the version to show")
    models.add_argument("--to", type=int, default=None, metavar="V", help="rollback: the version to restore")
    models.add_argument("--insecure", action="store_true",
                        help="rollback: publish UNSIGNED when CT_STREAM_SIGNING_KEY is not set (development only)")
    _bootstrap_arg(models, "the Kafka cluster (required)")

    validate = sub.add_parser(
        "validate", help="check topology files",
        description="Load each topology file, check every field and build its model. Prints one line per "
                    "file; exits 1 if any file is invalid.")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    return p


def _bootstrap_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--bootstrap", default=os.environ.get("CT_STREAM_BOOTSTRAP") or None,
                   help=f"{text} (default: $CT_STREAM_BOOTSTRAP)")


def _bootstrap_missing(args: argparse.Namespace) -> bool:
    """Say so (and return True) when no Kafka cluster was given."""
    if args.bootstrap:
        return False
    print("error: --bootstrap: missing; allowed: HOST:PORT of a Kafka cluster (or set CT_STREAM_BOOTSTRAP; "
          "`ct-stream broker` starts a local one)", file=sys.stderr)
    return True


def _signing_key() -> bytes | None:
    """The HMAC key of model updates, from ``CT_STREAM_SIGNING_KEY`` (None when unset)."""
    value = os.environ.get("CT_STREAM_SIGNING_KEY")
    return value.encode() if value else None


def _refuse_unsigned(alternative: str) -> int:
    """Exit code 2, saying the signing key is missing and what ``alternative`` there is."""
    print("error: CT_STREAM_SIGNING_KEY: not set; allowed: the HMAC key model updates are signed with (the "
          f"trainer signs, serving nodes verify with the same key), or {alternative}", file=sys.stderr)
    return 2


def _cache_dir() -> Path | None:
    value = os.environ.get("CT_STREAM_CACHE_DIR")
    return Path(value) if value else None


def _cmd_validate(files: Sequence[Path]) -> int:
    from ct_stream.topology import load_topology

    failed = 0
    for path in files:
        try:
            t = load_topology(path)
        except CtStreamError as e:
            failed += 1
            message = str(e)
            print(f"FAIL {message if message.startswith(str(path)) else f'{path}: {message}'}")
            continue
        model = str(t.build_model())
        print(f"ok   {path}: {t.name!r}: {t.events_topic} + {t.labels_topic} -> {t.examples_topic}; "
              f"{len(t.features)} features; {t.label_type}; join {t.join.max_label_delay:g}s, "
              f"on timeout {t.join.timeout_policy}; model {model}")
    return 1 if failed else 0


def demo_topology() -> "Topology":  # noqa: F821 - imported lazily
    """The built-in topology of ``ct-stream demo``."""
    from ct_stream.topology import Topology

    return Topology(name="demo", events_topic="demo.events", labels_topic="demo.labels",
                    features={"amount": "float", "age": "int", "returning": "bool", "channel": "str"},
                    label_type="binary", partitions=3, join={"max_label_delay": "10m", "grace": "30s"})


def _cmd_demo(args: argparse.Namespace) -> int:
    import secrets
    import tempfile

    from ct_stream.runtime.pipeline import run_pipeline
    from ct_stream.runtime.smoke import run_smoke
    from ct_stream.topology import load_topology

    if args.events < 1:
        print(f"error: --events: got {args.events}; allowed: an integer >= 1", file=sys.stderr)
        return 2
    topology = load_topology(args.topology) if args.topology else demo_topology()
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from ct_stream.kafka.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
        print(f"embedded broker (Tansu, memory only) on {bootstrap}")
    else:
        print(f"using Kafka at {bootstrap}")
    try:
        print(f"topology {topology.name!r}: {topology.events_topic} + {topology.labels_topic}, "
              f"{len(topology.features)} features, {topology.label_type} label")
        report = run_smoke(topology, bootstrap, n_events=args.events, seed=args.seed, log=print)
        for line in report.lines():
            print(line)
        problems = report.problems()
        print("smoke pipeline: " + ("FAILED" if problems else "ok, every record accounted for"), flush=True)
        if not problems:
            print("\njoiner + trainer: join the delayed labels, learn, gate and publish a signed version",
                  flush=True)
            with tempfile.TemporaryDirectory(prefix="ct-stream-demo-") as data_dir:
                end_ts = 1_700_000_000.0 + args.events / 1000 + topology.join.max_label_delay + 86_400.0
                pipeline = run_pipeline(topology, bootstrap, signing_key=secrets.token_bytes(32),
                                        data_dir=Path(data_dir), end_ts=end_ts, log=print)
            for line in pipeline.lines():
                print(line)
            problems += pipeline.problems
    finally:
        if broker is not None:
            broker.stop()
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("demo: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from ct_stream.kafka._process import run_in_foreground
    from ct_stream.kafka.apache import ApacheKafka, fetch_jars
    from ct_stream.kafka.broker import EmbeddedBroker

    if args.kind == "embedded":
        return run_in_foreground(EmbeddedBroker(port=args.port), "embedded broker (Tansu, memory only)")
    cache = _cache_dir()
    fetch_jars(cache)
    return run_in_foreground(ApacheKafka(args.data_dir, cache), f"Apache Kafka (data in {args.data_dir})")


def _cmd_run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from prometheus_client import CollectorRegistry

    from ct_stream.metrics import serve_metrics
    from ct_stream.runtime import tune_gc
    from ct_stream.runtime.joiner import JoinerWorker
    from ct_stream.topology import load_topology

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _bootstrap_missing(args):
        return 2
    topology = load_topology(args.topology)
    registry = CollectorRegistry()
    if args.metrics_port is not None:
        port = serve_metrics(registry, args.metrics_port, args.metrics_host)
        print(f"metrics on http://{args.metrics_host}:{port}/metrics", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    tune_gc()
    workers: list = []
    if args.role in ("joiner", "all"):
        joiner = JoinerWorker(topology, args.bootstrap, instance=args.instance, mode=args.mode, registry=registry)
        joiner.setup()
        print(f"joiner {topology.name!r} instance {args.instance} running in {joiner.mode} mode on {args.bootstrap}",
              flush=True)
        workers.append(joiner)
    if args.role in ("trainer", "all"):
        from ct_stream.runtime.trainer import TrainerWorker

        key = _signing_key()
        if key is None and not args.insecure:
            return _refuse_unsigned("--insecure to publish unsigned updates")
        trainer = TrainerWorker(topology, args.bootstrap, signing_key=key,
                                insecure=args.insecure, registry=registry, data_dir=args.data_dir,
                                checkpoint_interval=args.checkpoint_interval)
        trainer.setup()
        print(f"trainer {topology.name!r} running ({trainer.learner.path} path, {trainer.learned} examples learned, "
              f"champion v{trainer.champion_version}) on {args.bootstrap}", flush=True)
        workers.append(trainer)
    if len(workers) == 1:
        workers[0].run(stop)
        return 0
    from ct_stream.runtime.together import JoinAndTrain

    loop = JoinAndTrain(joiner, trainer)  # both in one thread, one step each in turn
    try:
        while not stop.is_set():
            loop.step()
    finally:
        joiner.close()
        trainer.close()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import gc
    import logging
    import signal

    from ct_stream.serving.server import serve
    from ct_stream.topology import load_topology

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _bootstrap_missing(args):
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port: got {args.port}; allowed: 0..65535 (0: a free port)", file=sys.stderr)
        return 2
    key = _signing_key()
    if key is None and not args.insecure:
        return _refuse_unsigned("--insecure to accept unsigned updates (development only)")
    topology = load_topology(args.topology)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # uvicorn handles the signal while it runs, then re-raises it here

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)

    def listening(host: str, port: int) -> None:
        # the start-up heap (modules, the server, the first model) leaves the collector's
        # view: a full collection of it held the GIL, and so every predict, for ~20 ms here
        gc.freeze()
        print(f"serving {topology.name} on http://{host}:{port} (model updates from {topology.models_topic})",
              flush=True)

    try:
        serve(topology, args.bootstrap, host=args.host, port=args.port, signing_key=key,
              insecure=args.insecure, log_predictions=args.log_predictions, on_listening=listening)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import orjson

    from ct_stream.runtime.models import read_updates, rollback
    from ct_stream.topology import load_topology

    if _bootstrap_missing(args):
        return 2
    key = _signing_key()
    topology = load_topology(args.topology)
    if args.action == "rollback":
        if args.to is None:
            print("error: --to: missing; allowed: the version to restore (see `ct-stream models list`)",
                  file=sys.stderr)
            return 2
        if key is None and not args.insecure:
            return _refuse_unsigned("--insecure to publish an unsigned rollback")
        update = rollback(args.bootstrap, topology, key, args.to, insecure=args.insecure)
        print(f"published v{update.version}: rollback to v{update.parent_version} ({update.artifact_format}, "
              f"sha256 {update.artifact_sha256[:12]}) on {topology.models_topic}")
        return 0
    entries = read_updates(args.bootstrap, topology, key, insecure=key is None)
    if args.action == "list":
        if not entries:
            print(f"no versions of {topology.model_name!r} on {topology.models_topic}")
        for entry in entries:
            print(entry.line())
        return 0
    if args.version is None:
        print("error: V: missing; allowed: the version to show (see `ct-stream models list`)", file=sys.stderr)
        return 2
    found = [e for e in entries if e.update is not None and e.update.version == args.version]
    if not found:
        have = [e.update.version for e in entries if e.update is not None]
        print(f"error: V: got {args.version}; allowed: a version on {topology.models_topic}: {have or 'none'}",
              file=sys.stderr)
        return 2
    entry = found[-1]
    shown = entry.update.to_dict()  # type: ignore[union-attr]
    update = entry.update
    assert update is not None
    for field, inline in (("artifact", update.artifact_inline),
                          ("champion_artifact", update.champion_artifact and update.champion_artifact.inline)):
        if inline is not None:
            shown[field]["inline"] = f"<{len(inline)} bytes inline>"
    shown["verified"] = entry.problem is None and entry.signature_checked
    if entry.problem is not None:
        shown["problem"] = entry.problem
    print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ct-stream`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "validate":
            return _cmd_validate(args.files)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "models":
            return _cmd_models(args)
        return _cmd_broker(args)
    except CtStreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
