"""ct-stream: streaming micro-batch continuous training on Kafka.

Applications produce prediction events and, later, labels to Kafka; ct-stream joins
them, learns online, retrains on micro-batch snapshots, gates every candidate against
the champion and publishes signed model versions that serving nodes hot-swap.
"""

from importlib.metadata import PackageNotFoundError, version

from ct_stream.errors import CtStreamError

try:
    __version__ = version("ct-stream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["CtStreamError", "__version__"]
