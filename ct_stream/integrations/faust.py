"""A hot-swapped ct-stream model inside faust-streaming agents (``pip install 'ct-stream[faust]'``).

:class:`FaustModel` ties a :class:`~ct_stream.serving.ModelSubscriber` to a Faust app's
life: the subscriber starts with the worker and tails ``<name>.models`` in the
background; an agent calls :meth:`FaustModel.predict`, which answers with the latest
verified version (and the canary for the canary's share of keys). A newly published
version takes effect for the next event, with no restart and no lock on the agent's path.

.. code-block:: python

    import faust
    from ct_stream.integrations.faust import FaustModel

    app = faust.App("scorer", broker="kafka://127.0.0.1:9092")
    model = FaustModel(app, topology, "127.0.0.1:9092", signing_key=key)
    requests = app.topic("requests", value_serializer="json")

    @app.agent(requests)
    async def score(stream):
        async for request in stream:
            answer = model.predict(request["features"], key=request["id"])
            ...  # answer.value, answer.probabilities, answer.version, answer.route
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from ct_stream.serving import ModelSubscriber, Prediction
from ct_stream.topology import Topology

__all__ = ["FaustModel"]


class FaustModel:
    """A model for Faust agents, hot-swapped from ``<name>.models``.

    The subscriber starts when the Faust worker starts (``app.task``) and is closed when
    it stops; until the first verified version is loaded, :meth:`predict` raises
    :class:`~ct_stream.errors.ServingError` (use :meth:`wait_for_version` in a startup
    task to hold the agents back).
    """

    def __init__(self, app: Any, topology: Topology, bootstrap: str, *, signing_key: bytes | None,
                 insecure: bool = False, registry: CollectorRegistry | None = None) -> None:
        self.subscriber = ModelSubscriber(bootstrap, topology, signing_key=signing_key, insecure=insecure,
                                          registry=registry)

        async def start_subscriber() -> None:
            self.subscriber.start()

        async def close_subscriber(*_: Any, **__: Any) -> None:
            self.subscriber.close()

        app.task(start_subscriber)
        app.on_before_shutdown.connect(close_subscriber)

    def predict(self, features: dict[str, Any], key: str | None = None) -> Prediction:
        """The latest version's answer (see :meth:`ModelSubscriber.predict`)."""
        return self.subscriber.predict(features, key=key)

    async def wait_for_version(self, version: int, timeout: float) -> bool:
        """Await (without blocking the event loop) until ``version`` or a later one serves."""
        return await asyncio.get_running_loop().run_in_executor(None, self.subscriber.wait_for_version, version,
                                                                timeout)

    @property
    def version(self) -> int | None:
        """The champion's version now (None before the first)."""
        return self.subscriber.current_version
