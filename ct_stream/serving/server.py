"""The reference HTTP server of a serving node: ``ct-stream serve TOPOLOGY``.

A Starlette (ASGI) app, served by uvicorn with one worker, around a
:class:`~ct_stream.serving.ModelSubscriber`:

- ``POST /predict``: one request ``{"features": {...}, "key": "...", "id": "..."}`` or a
  batch ``{"requests": [...]}`` (at most :data:`MAX_BATCH`); answers
  ``{"value", "probabilities", "version", "route", "id"}`` or ``{"predictions": [...]}``.
- ``GET /healthz``: 200 once a model is loaded, 503 before.
- ``GET /model``: the serving version's update message (metrics, lineage) and the
  canary/previous versions.
- ``GET /metrics``: the Prometheus registry (``ct_serving_*`` and ``ct_server_*``).

Bad requests get a 4xx JSON ``{"error": "..."}`` saying what was wrong, with which value
and what is allowed; nothing a client sends can stop the server. ``predict`` is lock-free
and takes microseconds, so it runs inline on the event loop.

Served predictions that carry an ``id`` are logged to the topology's events topic (an
event with ``served_version`` and ``prediction``, keyed by the id) so the joiner joins
them with their labels later ("closing the loop"). The Kafka producer lives in
:mod:`ct_stream.kafka.events_io`; this module only sees a callable.

See docs/serving.md, "Reference server".
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from typing import Any, AsyncIterator, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ct_stream.errors import LearnError, ServingError
from ct_stream.metrics import ServerMetrics
from ct_stream.records import Event, encode_event
from ct_stream.serving.subscriber import ModelSubscriber, Prediction
from ct_stream.topology import Topology

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "PredictionLogger", "ServerMetrics", "make_app", "serve"]

log = logging.getLogger("ct_stream.serving.server")

#: The most requests one ``POST /predict`` batch may hold.
MAX_BATCH = 1000
#: The largest request body accepted (bytes).
MAX_BODY_BYTES = 8 * 1024 * 1024

#: ``prediction_log(key, value) -> queued``: produce one encoded event keyed by its id;
#: False when it could not be queued (dropped). Must not block.
PredictionLogger = Callable[[bytes, bytes], bool]

_REQUEST_FIELDS = ("features", "key", "id")
_JSON_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_ENDPOINTS = {"/predict": "predict", "/healthz": "healthz", "/model": "model", "/metrics": "metrics"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json(status: int, obj: Any) -> Response:
    return Response(orjson.dumps(obj, option=_JSON_OPTS), status_code=status, media_type="application/json")


def _class_key(k: Any) -> str:
    if isinstance(k, bool):
        return "true" if k else "false"
    return str(k)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _parse_item(obj: Any, where: str, max_id: int) -> tuple[dict[str, Any], str | None, str | None]:
    """``(features, key, id)`` of one request object, or :class:`_BadRequest`."""
    if not isinstance(obj, dict):
        raise _BadRequest(400, f"{where}: got {type(obj).__name__} {_short(obj)}; allowed: a JSON object "
                               '{"features": {...}, "key": "optional string", "id": "optional string"}')
    extra = [k for k in obj if k not in _REQUEST_FIELDS]
    if extra:
        raise _BadRequest(400, f"{where}: unknown field(s) {', '.join(map(repr, extra))}; allowed: "
                               f"{', '.join(map(repr, _REQUEST_FIELDS))}")
    if "features" not in obj:
        raise _BadRequest(400, f"{where}: missing 'features'; allowed: an object of feature name -> value")
    features = obj["features"]
    if not isinstance(features, dict):
        raise _BadRequest(400, f"{where}.features: got {type(features).__name__} {_short(features)}; "
                               "allowed: an object of feature name -> value")
    key = obj.get("key")
    if key is not None and not isinstance(key, str):
        raise _BadRequest(400, f"{where}.key: got {type(key).__name__} {_short(key)}; allowed: a string "
                               "(the routing key: the same key always gets the same route) or null")
    rid = obj.get("id")
    if rid is not None and not (isinstance(rid, str) and 0 < len(rid) <= max_id):
        raise _BadRequest(400, f"{where}.id: got {type(rid).__name__} {_short(rid)}; allowed: a non-empty string "
                               f"of at most {max_id} characters (the event id its label will carry) or null")
    return features, key, rid


def make_app(subscriber: ModelSubscriber, topology: Topology, *, registry: CollectorRegistry,
             prediction_log: PredictionLogger | None, metrics: ServerMetrics | None = None,
             clock: Callable[[], float] = time.time, max_batch: int = MAX_BATCH) -> Starlette:
    """The ASGI app answering for ``subscriber`` (which the caller starts and closes).

    ``registry`` is the one ``GET /metrics`` exposes (pass the subscriber's); the
    ``ct_server_*`` metrics go on it too, unless ``metrics`` (built on it) is given.
    ``prediction_log(key, value) -> bool`` receives every served prediction that carries
    an id, as an encoded event keyed by the id (None: nothing is logged); ``clock`` gives
    the events' ``ts``.
    """
    m = metrics if metrics is not None else ServerMetrics(registry, topology.name)
    schema = topology.record_schema
    feature_names = tuple(topology.features)
    label_type = topology.label_type
    max_id = schema.max_string_length

    def logged_value(p: Prediction) -> float | str | None:
        if label_type == "binary":
            return None if p.probabilities is None else float(p.probabilities.get(True, float(bool(p.value))))
        if label_type == "multiclass":
            return None if p.value is None else str(p.value)
        return None if p.value is None else float(p.value)

    def log_served(items: list[tuple[dict[str, Any], str | None]], answers: list[Prediction]) -> None:
        if prediction_log is None:
            return
        now = clock()
        for (features, rid), p in zip(items, answers):
            if rid is None:
                m.logged("no_id")
                continue
            event = Event(rid, now, {name: features[name] for name in feature_names}, p.version, logged_value(p))
            try:
                queued = prediction_log(rid.encode("utf-8"), encode_event(event, schema))
            except Exception as e:  # noqa: BLE001 - logging must never fail a served request
                log.warning("could not log the prediction of id %r: %s", rid, e)
                queued = False
            m.logged("queued" if queued else "dropped")

    def answer(p: Prediction, rid: str | None) -> dict[str, Any]:
        probs = None if p.probabilities is None else {_class_key(k): _jsonable(v) for k, v in p.probabilities.items()}
        return {"value": _jsonable(p.value), "probabilities": probs, "version": p.version, "route": p.route,
                "id": rid}

    def reply(endpoint: str, status: int, obj: Any) -> Response:
        m.request(endpoint, status)
        return _json(status, obj)

    async def predict(request: Request) -> Response:
        try:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise _BadRequest(413, f"body: {length} bytes; allowed: at most {MAX_BODY_BYTES} bytes")
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                raise _BadRequest(413, f"body: {len(body)} bytes; allowed: at most {MAX_BODY_BYTES} bytes")
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise _BadRequest(400, f"body: not valid JSON ({e}); allowed: a JSON object "
                                       '{"features": {...}} or {"requests": [...]}') from None
            if not isinstance(data, dict):
                raise _BadRequest(400, f"body: got a JSON {type(data).__name__} {_short(data)}; allowed: a JSON "
                                       'object {"features": {...}} or {"requests": [...]}')
            if "requests" in data:
                if len(data) != 1:
                    others = ", ".join(repr(k) for k in data if k != "requests")
                    raise _BadRequest(400, f"body: a batch has only 'requests'; got also {others}")
                batch = data["requests"]
                if not isinstance(batch, list):
                    raise _BadRequest(400, f"requests: got {type(batch).__name__} {_short(batch)}; allowed: a list "
                                           "of request objects")
                if len(batch) > max_batch:
                    raise _BadRequest(413, f"requests: got {len(batch)} requests; allowed: at most {max_batch} "
                                           "per batch (split it)")
                parsed = [_parse_item(obj, f"requests[{i}]", max_id) for i, obj in enumerate(batch)]
            else:
                parsed = [_parse_item(data, "body", max_id)]
            answers = []
            for i, (features, key, _rid) in enumerate(parsed):
                try:
                    answers.append(subscriber.predict(features, key))
                except LearnError as e:
                    where = f"requests[{i}]: " if "requests" in data else ""
                    raise _BadRequest(422, f"{where}{e}") from None
            log_served([(f, rid) for f, _k, rid in parsed], answers)
            if "requests" in data:
                return reply("predict", 200, {"predictions": [answer(p, it[2]) for p, it in zip(answers, parsed)]})
            return reply("predict", 200, answer(answers[0], parsed[0][2]))
        except _BadRequest as e:
            return reply("predict", e.status, {"error": e.message})
        except ServingError as e:
            return reply("predict", 503, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - one request's failure must not stop the server
            log.exception("POST /predict failed")
            return reply("predict", 500, {"error": f"internal error: {type(e).__name__}: {e}"})

    async def healthz(request: Request) -> Response:
        champion, canary = subscriber.current_version, subscriber.canary_version
        serving = champion if champion is not None else canary
        body: dict[str, Any] = {"status": "ok" if serving is not None else "no model yet", "version": serving,
                                "canary_version": canary, "synced": subscriber.synced}
        error = subscriber.error
        if error is not None:
            body["reader_error"] = str(error)
        return reply("healthz", 200 if serving is not None else 503, body)

    async def model(request: Request) -> Response:
        update = subscriber.champion_update
        extra = {"canary_version": subscriber.canary_version, "previous_version": subscriber.previous_version,
                 "rejected_updates": dict(subscriber.rejected), "models_topic": topology.models_topic}
        if update is None:
            return reply("model", 503, {"status": "no model yet", "version": None, **extra})
        return reply("model", 200, {
            "name": update.name, "version": subscriber.current_version, "parent_version": update.parent_version,
            "action": update.action, "created_at": update.created_at,
            "artifact": {"format": update.artifact_format, "sha256": update.artifact_sha256,
                         "uri": update.artifact_uri,
                         "inline_bytes": None if update.artifact_inline is None else len(update.artifact_inline)},
            "metrics": update.metrics, "gate_report": update.gate_report, "lineage": update.lineage,
            "topology_hash": update.topology_hash, "package_version": update.package_version, **extra})

    async def metrics_endpoint(request: Request) -> Response:
        m.request("metrics", 200)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        endpoint = _ENDPOINTS.get(request.url.path, "other")
        allowed = "POST /predict, GET /healthz, GET /model, GET /metrics"
        return reply(endpoint, status, {"error": f"{request.method} {request.url.path}: "
                                                 f"{getattr(exc, 'detail', 'error')}; allowed: {allowed}"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"]),
                             Route("/model", model, methods=["GET"]),
                             Route("/metrics", metrics_endpoint, methods=["GET"])],
                     exception_handlers={HTTPException: http_error})


def serve(topology: Topology, bootstrap: str, *, host: str = "127.0.0.1", port: int = 8000,
          signing_key: bytes | None, insecure: bool = False, registry: CollectorRegistry | None = None,
          log_predictions: bool = True, on_listening: Callable[[str, int], None] | None = None) -> None:
    """Serve ``topology``'s model over HTTP until SIGINT/SIGTERM (blocking).

    Starts a :class:`ModelSubscriber` on ``bootstrap`` (verifying with ``signing_key``;
    ``insecure`` accepts unsigned updates), then uvicorn with one worker on
    ``host:port`` (0: a free port), and calls ``on_listening(host, port)`` once it
    accepts connections. With ``log_predictions`` (and the topology's
    ``serving.log_predictions``) served predictions with an id go to the events topic.
    On the way out: the server drains, the subscriber is closed, logged predictions are
    flushed. uvicorn re-raises a caught signal after its shutdown, so the caller should
    handle SIGINT/SIGTERM (``ct-stream serve`` does).
    """
    import uvicorn

    from ct_stream.kafka.events_io import PredictionLog

    registry = registry if registry is not None else CollectorRegistry()
    subscriber = ModelSubscriber(bootstrap, topology, signing_key=signing_key, insecure=insecure, registry=registry)
    metrics = ServerMetrics(registry, topology.name)
    plog = None
    if log_predictions and topology.serving.log_predictions:
        plog = PredictionLog(bootstrap, topology.events_topic, topology.kafka, on_outcome=metrics.logged)
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it, Nagle's
    # algorithm and delayed ACKs add ~40 ms to every response written in two parts.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServingError(f"--port: cannot listen on {host}:{port} ({e}); allowed: a free port (0: any)") from None
    sock.listen(2048)
    bound_port = int(sock.getsockname()[1])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_listening is not None:
            on_listening(host, bound_port)
        yield

    app = make_app(subscriber, topology, registry=registry, prediction_log=plog, metrics=metrics)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, workers=1, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    subscriber.start()
    try:
        server.run(sockets=[sock])
    finally:
        subscriber.close()
        sock.close()
        if plog is not None:
            try:
                plog.flush(10)
            except Exception as e:  # noqa: BLE001 - report, and still shut down
                log.warning("%s", e)
