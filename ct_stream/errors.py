"""The one exception hierarchy of ct-stream.

Every error the package raises on purpose is a :class:`CtStreamError`. Messages say
what was wrong, with which value, and what is allowed.

>>> try:
...     raise TopologyError("join.grace", -1, "a duration >= 0")
... except CtStreamError as e:
...     print(e)
join.grace: got -1; allowed: a duration >= 0
"""

from __future__ import annotations

from typing import Any


class CtStreamError(Exception):
    """Base class of every error ct-stream raises on purpose."""


class TopologyError(CtStreamError):
    """A topology field holds a value that is not allowed.

    ``field`` is the dotted path of the field (``join.max_label_delay``), ``value``
    what was given, ``allowed`` a short description of what would be accepted.
    """

    def __init__(self, field: str, value: Any, allowed: str, *, source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: got {_short(value)}; allowed: {allowed}")


def _short(value: Any, limit: int = 160) -> str:
    """A one-line repr of ``value``; River estimators print as their pipeline (``A | B``)."""
    text = str(value) if hasattr(value, "learn_one") else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TopologyLoadError(CtStreamError):
    """A topology file could not be read or does not define ``topology``."""


class CodecError(CtStreamError):
    """An internal message (for example an Arrow batch of examples) does not decode."""


class BrokerError(CtStreamError):
    """A broker could not be found, started, reached or stopped."""


class BrokerNotInstalled(BrokerError):
    """A broker's program or jars are missing; the message says how to install them."""


class InputError(CtStreamError):
    """An argument, batch or saved state holds a value that is not allowed (the base of
    the pure modules' errors below).

    ``what`` names the argument or field (``X``, ``batch.schema``, ``config.alpha``),
    ``value`` what was given or found, ``allowed`` a short description of what would be
    accepted.
    """

    def __init__(self, what: str, value: Any, allowed: str) -> None:
        self.what = what
        self.value = value
        self.allowed = allowed
        super().__init__(f"{what}: got {_short(value)}; allowed: {allowed}")


class LearnError(InputError):
    """A learner, metric or drift monitor (``ct_stream.learn``) got input or state it
    cannot use."""


class WindowError(InputError):
    """The window store or a snapshot (``ct_stream.window``) got input it cannot use, or a
    snapshot file does not verify."""


class GateError(InputError):
    """The champion/challenger gate (``ct_stream.gate``) got input or a setting it cannot use."""


class RegistryError(InputError):
    """A model-update message or artifact (``ct_stream.registry``) got input it cannot use,
    or a version does not follow the previous one."""


class VerificationError(CtStreamError):
    """A received model-update message does not verify; nothing of it may be loaded.

    ``reason`` is one of ``malformed`` (not a well-formed message), ``unsigned`` (no
    signature and ``insecure`` not set), ``bad_signature``, ``missing_artifact`` (the
    ``file://`` artifact cannot be read) and ``bad_hash`` (the artifact's sha256 differs);
    ``detail`` says what was found.

    >>> print(VerificationError("bad_hash", "sha256 abc..., message says def..."))
    bad_hash: sha256 abc..., message says def...
    """

    REASONS = ("malformed", "unsigned", "bad_signature", "missing_artifact", "bad_hash")

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class TrainerError(InputError):
    """The trainer (``ct_stream.runtime.trainer``) cannot start with the settings given
    (no signing key, a model that cannot be sent to the retrain subprocess, ...)."""


class ServingError(CtStreamError):
    """A serving node cannot answer: no verified model is loaded yet, or the subscriber is
    closed or misconfigured (``ct_stream.serving``). The message says which and what to do.

    >>> print(ServingError("no model loaded yet for 'clicks'"))
    no model loaded yet for 'clicks'
    """
