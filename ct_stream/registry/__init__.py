"""Model-update messages of the ``<name>.models`` topic: signed, verified, with artifacts.

Pure code (no Kafka, no environment variables, no clock reads). See ``docs/registry.md``.

>>> from ct_stream.registry import ModelUpdate, sign, verify, make_artifact
>>> from ct_stream.learn.linear import BatchLogisticRegression
>>> data, sha = make_artifact(BatchLogisticRegression(1).state())
>>> u = ModelUpdate(name="m", version=1, parent_version=None, action="promote", created_at=0.0,
...                 artifact_format="ct_stream.linear/1", artifact_sha256=sha, artifact_inline=data)
>>> verify(sign(u, b"k"), b"k") == u
True
"""

from ct_stream.errors import RegistryError, VerificationError
from ct_stream.registry.artifact import (INLINE_LIMIT, LINEAR_FORMAT, inline_size, load_artifact,
                                         make_artifact, store_artifact)
from ct_stream.registry.message import (ACTIONS, FORMATS, MESSAGE_KIND, Action, ArtifactFormat, ArtifactRef,
                                        ModelUpdate, champion_version, champion_with_artifact,
                                        check_successor, decode,
                                        encode_unsigned, path_from_uri, read_artifact_file, sign,
                                        signed_bytes, verify, verify_with_artifact)

__all__ = [
    "ACTIONS", "FORMATS", "INLINE_LIMIT", "LINEAR_FORMAT", "MESSAGE_KIND", "Action",
    "ArtifactFormat", "ArtifactRef", "ModelUpdate", "RegistryError", "VerificationError",
    "champion_version", "champion_with_artifact",
    "check_successor", "decode", "encode_unsigned", "inline_size", "load_artifact",
    "make_artifact", "path_from_uri", "read_artifact_file", "sign", "signed_bytes",
    "store_artifact", "verify", "verify_with_artifact",
]
