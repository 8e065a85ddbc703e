"""Serving: consume the promotion topic and answer predictions with hot-swapped models.

- :class:`ModelSubscriber` (``ct_stream/serving/subscriber.py``): tails ``<name>.models``,
  verifies each update before loading it, swaps champion / canary / rollback atomically,
  and answers :meth:`~ModelSubscriber.predict` with no lock on the request path.
- :mod:`ct_stream.serving.routing`: deterministic canary routing by request key.

See docs/serving.md.
"""

from ct_stream.errors import ServingError
from ct_stream.serving.routing import canary_point, route_for
from ct_stream.serving.subscriber import REJECT_REASONS, ModelSubscriber, Prediction

__all__ = ["ModelSubscriber", "Prediction", "REJECT_REASONS", "ServingError", "canary_point", "route_for"]
