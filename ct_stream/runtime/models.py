"""``ct-stream models``: list and show the versions on ``<name>.models``, roll back by hand.

The promotion topic is compacted with the model name as key, so it holds every version
only until the broker compacts it; after that, the latest update of each model (and what
came after the last compaction). :func:`read_updates` reads what is there now and
verifies each message; :func:`rollback` publishes a signed ``rollback`` update that
restores an older version's artifact (it must still be on the topic, or in its
``file://`` location).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ct_stream.errors import RegistryError, VerificationError
from ct_stream.kafka.trainer_io import ModelPublisher, read_topic
from ct_stream.registry import (ModelUpdate, champion_version, champion_with_artifact, check_successor, decode,
                                encode_unsigned, sign, verify_with_artifact)
from ct_stream.topology import Topology

__all__ = ["Entry", "read_updates", "rollback"]


@dataclass(frozen=True)
class Entry:
    """One message of this model on the promotion topic: its offset, the update (``None``
    when it is not even well-formed), and why it does not verify (``None`` when it does)."""

    offset: int
    update: ModelUpdate | None
    problem: str | None
    signature_checked: bool = True
    artifact: bytes | None = field(default=None, repr=False)  # the verified artifact's bytes

    def line(self) -> str:
        """One line for ``ct-stream models list``."""
        u = self.update
        if u is None:
            return f"offset {self.offset}: unreadable: {self.problem}"
        m = u.metrics
        parts = [f"v{u.version}", u.action, f"parent v{u.parent_version}" if u.parent_version else "no parent",
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(u.created_at)), u.artifact_format,
                 f"sha256 {u.artifact_sha256[:12]}",
                 f"NOT VERIFIED ({self.problem})" if self.problem is not None else
                 "verified" if self.signature_checked else "hash verified, signature NOT CHECKED (no key)"]
        if "holdout_mean_loss" in m:
            parts.append(f"holdout {m.get('gate_metric', 'loss')} {m['holdout_mean_loss']}")
        if "examples_learned" in m:
            parts.append(f"{m['examples_learned']} examples")
        if u.lineage["snapshot"] is not None:
            parts.append(f"retrained on {u.lineage['snapshot']['path'].rsplit('/', 1)[-1]}")
        return "  ".join(parts)


def read_updates(bootstrap: str, topology: Topology, key: bytes | None, insecure: bool = False) -> list[Entry]:
    """Every message of the topology's model on ``<name>.models`` now, in offset order.

    With ``key``, each is verified (sha256 and HMAC) and a verified entry carries its
    artifact's bytes. Without one, ``insecure`` checks the artifact hashes only
    (``signature_checked=False``); otherwise every message is reported as not verified. A
    message that does not verify still has its ``update`` when it is well-formed (its
    version counts for the next one)."""
    out = []
    for k, value, _, offset in read_topic(bootstrap, topology.models_topic, topology.kafka):
        if k != topology.model_name.encode() or value is None:
            continue
        try:
            if key is None and not insecure:
                raise VerificationError("unsigned", "no key to verify signatures with")
            update, data = verify_with_artifact(value, key, insecure=insecure)
            out.append(Entry(offset, update, None, signature_checked=key is not None, artifact=data))
        except (VerificationError, RegistryError) as e:
            try:
                update: ModelUpdate | None = decode(value)[0]
            except VerificationError:
                update = None
            out.append(Entry(offset, update, str(e)))
    return out


def rollback(bootstrap: str, topology: Topology, key: bytes | None, to_version: int, *, insecure: bool = False,
             clock: Callable[[], float] = time.time, reason: str = "manual") -> ModelUpdate:
    """Publish a ``rollback`` to ``to_version``: version = the highest on the topic + 1,
    parent = ``to_version``, the restored version's artifact, format, lineage and metrics.

    Raises :class:`RegistryError` when ``to_version`` is not a verified update on the topic,
    or is not older than the current champion (the registry's successor rules).
    """
    entries = read_updates(bootstrap, topology, key, insecure)
    good = [e.update for e in entries if e.update is not None and e.problem is None]
    for u in list(good):  # a champion whose own update was compacted away rides on its canary
        if u.champion_artifact is not None and all(g.version != u.parent_version for g in good):
            try:
                good.append(champion_with_artifact(u)[0])
            except VerificationError:
                continue
    target = next((u for u in good if u.version == to_version and u.action != "rollback"), None)
    if target is None:
        have = sorted(u.version for u in good if u.action != "rollback")
        raise RegistryError("--to", to_version, f"a verified promote/canary version on {topology.models_topic}: "
                                                f"{have or 'none'} (older ones may have been compacted away)")
    latest = max(good, key=lambda u: u.version)
    top = max(e.update.version for e in entries if e.update is not None)
    metrics: dict[str, Any] = {**target.metrics, "rolled_back_from": champion_version(latest), "reason": reason}
    update = ModelUpdate(
        name=topology.model_name, version=top + 1, parent_version=to_version, action="rollback",
        created_at=float(clock()), artifact_format=target.artifact_format, artifact_sha256=target.artifact_sha256,
        artifact_inline=target.artifact_inline, artifact_uri=target.artifact_uri, metrics=metrics,
        gate_report=None, lineage=target.lineage, topology_hash=target.topology_hash,
        package_version=target.package_version)
    check_successor(latest, update)
    value = sign(update, key) if key is not None else encode_unsigned(update)
    publisher = ModelPublisher(bootstrap, topology.models_topic, topology.kafka)
    try:
        publisher.publish(topology.model_name.encode(), value)
    finally:
        publisher.close()
    return update
