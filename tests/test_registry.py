"""ct_stream.registry: signed model-update messages, verification, artifacts, versions."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import orjson
import pytest

from ct_stream.errors import InputError, RegistryError, VerificationError
from ct_stream.gate import GateConfig, evaluate
from ct_stream.learn.linear import BatchLogisticRegression
from ct_stream.registry import (ArtifactRef, ModelUpdate, champion_with_artifact, check_successor, encode_unsigned,
                                load_artifact, make_artifact, path_from_uri, sign, signed_bytes, store_artifact,
                                verify, verify_with_artifact)

KEY = b"test-key-0123456789"
ART = b'{"kind":"x","payload":[1,2,3]}'


def update(**kw) -> ModelUpdate:
    base = dict(name="clicks", version=3, parent_version=2, action="promote",
                created_at=1700000000.25, artifact_format="ct_stream.linear/1",
                artifact_sha256=hashlib.sha256(ART).hexdigest(), artifact_inline=ART,
                metrics={"log_loss": 0.31, "n": 1000},
                gate_report=evaluate([0.3, 0.4, 0.5], [0.2, 0.3, 0.4], config=GateConfig()).to_dict(),
                lineage={"examples_offsets": {0: 120, 1: 97, 10: 5},
                         "snapshot": {"path": "/data/snap-7.arrow", "sha256": "a" * 64}},
                topology_hash="b" * 64, package_version="0.1.0")
    base.update(kw)
    return ModelUpdate(**base)


def reason(excinfo) -> str:
    return excinfo.value.reason


def resign(msg: dict, key: bytes = KEY) -> bytes:
    import hmac
    msg = dict(msg)
    msg["signature"] = hmac.new(key, signed_bytes(msg), hashlib.sha256).hexdigest()
    return orjson.dumps(msg, option=orjson.OPT_SORT_KEYS)


# ---------------------------------------------------------------- round trips

def test_inline_round_trip():
    u = update()
    value = sign(u, KEY)
    assert verify(value, KEY) == u
    got, data = verify_with_artifact(value, KEY)
    assert got == u and data == ART
    msg = orjson.loads(value)
    assert msg["lineage"]["examples_offsets"] == {"0": 120, "1": 97, "10": 5}
    assert len(msg["signature"]) == 64


def test_file_round_trip(tmp_path):
    inline, uri, sha = store_artifact(ART, tmp_path, "clicks", 3, limit=0)
    assert inline is None and uri.startswith("file://")
    path = path_from_uri(uri)
    assert os.path.basename(path) == f"clicks-v3-{sha[:12]}.json"
    assert open(path, "rb").read() == ART
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]  # no temp left
    u = update(artifact_inline=None, artifact_uri=uri, artifact_sha256=sha)
    got, data = verify_with_artifact(sign(u, KEY), KEY)
    assert got == u and data == ART


def test_a_canary_carries_its_champions_artifact_under_the_signature(tmp_path):
    champ = b'{"kind":"champion"}'
    sha = hashlib.sha256(champ).hexdigest()
    ref = ArtifactRef("ct_stream.linear/1", sha, inline=champ)
    u = update(action="canary", champion_artifact=ref)
    value = sign(u, KEY)
    got = verify(value, KEY)
    assert got == u and got.champion_artifact == ref
    c, data = champion_with_artifact(got)
    assert data == champ
    assert (c.version, c.action, c.artifact_sha256, c.artifact_inline) == (2, "promote", sha, champ)
    # the signature covers it: another champion under the same signature is refused
    msg = orjson.loads(value)
    msg["champion_artifact"]["sha256"] = "0" * 64
    with pytest.raises(VerificationError) as e:
        verify(orjson.dumps(msg), KEY)
    assert reason(e) == "bad_signature"
    # bytes that do not match the signed sha256, and a file that is gone
    forged = update(action="canary", champion_artifact=ArtifactRef("ct_stream.linear/1", "0" * 64, inline=champ))
    with pytest.raises(VerificationError) as e:
        champion_with_artifact(verify(sign(forged, KEY), KEY))
    assert reason(e) == "bad_hash"
    gone = ArtifactRef("ct_stream.linear/1", sha, uri=f"file://{tmp_path}/gone.json")
    with pytest.raises(VerificationError) as e:
        champion_with_artifact(verify(sign(update(action="canary", champion_artifact=gone), KEY), KEY))
    assert reason(e) == "missing_artifact"


def test_champion_artifact_only_on_a_canary_and_absent_when_unset():
    ref = ArtifactRef("ct_stream.linear/1", "0" * 64, uri="file:///m.json")
    with pytest.raises(RegistryError, match="champion_artifact: got 'promote'; allowed: only on a canary"):
        update(champion_artifact=ref)
    with pytest.raises(RegistryError, match="champion_artifact.sha256"):
        ArtifactRef("ct_stream.linear/1", "xyz", uri="file:///m.json")
    with pytest.raises(RegistryError, match="exactly one of champion_artifact.inline and champion_artifact.uri"):
        ArtifactRef("ct_stream.linear/1", "0" * 64)
    # unset, the field is not in the message: messages signed before it existed still verify
    msg = orjson.loads(sign(update(action="canary"), KEY))
    assert "champion_artifact" not in msg
    with pytest.raises(RegistryError, match="champion_artifact: got None"):
        champion_with_artifact(verify(sign(update(action="canary"), KEY), KEY))


def test_injected_reader_is_used():
    u = update(artifact_inline=None, artifact_uri="file:///nowhere/a.json")
    seen = []

    def reader(path: str) -> bytes:
        seen.append(path)
        return ART

    assert verify(sign(u, KEY), KEY, read_file=reader) == u
    assert seen == ["/nowhere/a.json"]


def test_store_inline_under_limit(tmp_path):
    inline, uri, sha = store_artifact(ART, tmp_path / "d", "clicks", 1)
    assert inline == ART and uri is None and sha == hashlib.sha256(ART).hexdigest()
    assert not (tmp_path / "d").exists()
    # the limit is on the base64 size: 30 bytes -> 40
    assert store_artifact(b"x" * 30, tmp_path, "m", 1, limit=40)[0] is not None
    assert store_artifact(b"x" * 30, tmp_path, "m", 1, limit=39)[0] is None


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b", 5])
def test_store_rejects_bad_names(tmp_path, bad):
    with pytest.raises(RegistryError):
        store_artifact(ART, tmp_path, bad, 1, limit=0)


# ---------------------------------------------------------------- tampering

def test_tampered_version_or_metrics_is_bad_signature():
    value = sign(update(), KEY)
    for old, new in ((b'"version":3', b'"version":4'), (b'"log_loss":0.31', b'"log_loss":0.11'),
                     (b'"action":"promote"', b'"action":"canary"'), (b'"0":120', b'"0":121')):
        assert old in value
        with pytest.raises(VerificationError) as e:
            verify(value.replace(old, new), KEY)
        assert reason(e) == "bad_signature"


def test_every_byte_flip_is_refused():
    value = sign(update(metrics={"m": 1}, gate_report=None), KEY)
    for i in range(len(value)):
        bad = bytearray(value)
        bad[i] ^= 0x01
        with pytest.raises(VerificationError):
            verify(bytes(bad), KEY)


def test_tampered_inline_artifact_with_intact_signature_is_bad_hash():
    u = update(artifact_inline=b"other bytes")  # sha256 still that of ART
    with pytest.raises(VerificationError) as e:
        verify(sign(u, KEY), KEY)
    assert reason(e) == "bad_hash"


def test_tampered_file_is_bad_hash(tmp_path):
    _, uri, sha = store_artifact(ART, tmp_path, "clicks", 3, limit=0)
    value = sign(update(artifact_inline=None, artifact_uri=uri, artifact_sha256=sha), KEY)
    with open(path_from_uri(uri), "r+b") as f:
        f.write(b"X")
    with pytest.raises(VerificationError) as e:
        verify(value, KEY)
    assert reason(e) == "bad_hash"


def test_missing_file_is_missing_artifact(tmp_path):
    uri = (tmp_path / "gone.json").as_uri()
    with pytest.raises(VerificationError) as e:
        verify(sign(update(artifact_inline=None, artifact_uri=uri), KEY), KEY)
    assert reason(e) == "missing_artifact"


def test_load_artifact_rechecks_hash():
    data, sha = make_artifact(BatchLogisticRegression(1).state())
    u = update(artifact_inline=data, artifact_sha256=sha)
    with pytest.raises(VerificationError) as e:
        load_artifact(u, data + b" ")
    assert reason(e) == "bad_hash"


# ---------------------------------------------------------------- signatures and keys

def test_unsigned_refused_unless_insecure():
    value = encode_unsigned(update())
    assert orjson.loads(value)["signature"] is None
    with pytest.raises(VerificationError) as e:
        verify(value, KEY)
    assert reason(e) == "unsigned"
    assert verify(value, KEY, insecure=True) == update()
    assert verify(value, None, insecure=True) == update()


def test_insecure_still_checks_a_signature_when_a_key_is_given_and_the_hash():
    with pytest.raises(VerificationError) as e:
        verify(sign(update(), b"other"), KEY, insecure=True)
    assert reason(e) == "bad_signature"
    with pytest.raises(VerificationError) as e:
        verify(encode_unsigned(update(artifact_inline=b"zz")), None, insecure=True)
    assert reason(e) == "bad_hash"


def test_wrong_key_is_bad_signature():
    with pytest.raises(VerificationError) as e:
        verify(sign(update(), KEY), b"another key")
    assert reason(e) == "bad_signature"


@pytest.mark.parametrize("key", [None, b"", "text"])
def test_bad_keys_are_input_errors(key):
    with pytest.raises(RegistryError):
        sign(update(), key)
    with pytest.raises(RegistryError):
        verify(sign(update(), KEY), key)


# ---------------------------------------------------------------- malformed

def _msg() -> dict:
    return orjson.loads(sign(update(), KEY))


@pytest.mark.parametrize("value", [b"", b"not json", b"[1, 2]", b"null", "a str", b'{"kind": 1}'])
def test_unparsable_is_malformed(value):
    with pytest.raises(VerificationError) as e:
        verify(value, KEY)
    assert reason(e) == "malformed"


@pytest.mark.parametrize("change", [
    lambda m: m.pop("version"),
    lambda m: m.pop("lineage"),
    lambda m: m.update(extra=1),
    lambda m: m.update(version="3"),
    lambda m: m.update(version=True),
    lambda m: m.update(version=-1),
    lambda m: m.update(parent_version=3),
    lambda m: m.update(created_at="yesterday"),
    lambda m: m.update(created_at=1700000000),
    lambda m: m.update(name=""),
    lambda m: m.update(action="publish"),
    lambda m: m.update(metrics=[1]),
    lambda m: m.update(gate_report="ok"),
    lambda m: m["artifact"].update(format="onnx"),
    lambda m: m["artifact"].update(sha256="ABC"),
    lambda m: m["artifact"].update(inline="!!notbase64"),
    lambda m: m["artifact"].update(uri="https://example.com/a.json"),
    lambda m: m["artifact"].update(uri=None, inline=None),
    lambda m: m["artifact"].update(uri="file:///a.json"),
    lambda m: m["artifact"].pop("uri"),
    lambda m: m["lineage"].update(examples_offsets={"x": 1}),
    lambda m: m["lineage"].update(examples_offsets={"01": 1}),
    lambda m: m["lineage"].update(examples_offsets={"0": -1}),
    lambda m: m["lineage"].update(snapshot={"path": "/a"}),
    lambda m: m.update(topology_hash=5),
])
def test_missing_field_or_wrong_type_is_malformed_even_when_signed(change):
    msg = _msg()
    change(msg)
    with pytest.raises(VerificationError) as e:
        verify(resign(msg), KEY)
    assert reason(e) == "malformed"


@pytest.mark.parametrize("signature", ["zz", "A" * 64, 5, ""])
def test_bad_signature_field_is_malformed(signature):
    msg = _msg()
    msg["signature"] = signature
    with pytest.raises(VerificationError) as e:
        verify(orjson.dumps(msg), KEY)
    assert reason(e) == "malformed"


def test_resigned_well_formed_message_verifies():
    assert verify(resign(_msg()), KEY) == update()


# ---------------------------------------------------------------- canonical form

def test_canonical_encoding_is_independent_of_insertion_order():
    a = update(metrics={"a": 1, "b": {"x": 1.5, "y": [1, 2]}},
               lineage={"examples_offsets": {1: 5, 0: 7}, "snapshot": None})
    b = update(metrics={"b": {"y": [1, 2], "x": 1.5}, "a": 1},
               lineage={"examples_offsets": {0: 7, 1: 5}, "snapshot": None})
    assert sign(a, KEY) == sign(b, KEY)
    assert a == b
    assert b", " not in signed_bytes({"x": [1, 2], "y": {"a": 1}})  # no whitespace


def test_signature_covers_everything_but_itself():
    msg = _msg()
    assert b'"signature"' not in signed_bytes(msg)
    for key in msg:
        if key != "signature":
            assert f'"{key}"'.encode() in signed_bytes(msg)


def test_tuples_become_lists_and_non_finite_numbers_are_refused():
    assert update(metrics={"t": (1, 2)}).metrics == {"t": [1, 2]}
    for bad in (float("nan"), float("inf"), 2**64, object(), {1: 2}):
        with pytest.raises(RegistryError):
            update(metrics={"m": bad})


# ---------------------------------------------------------------- Literal checks

@pytest.mark.parametrize("action", ["promote", "canary", "rollback"])
def test_actions_accepted(action):
    assert update(action=action).action == action


@pytest.mark.parametrize("field,value", [("action", "publish"), ("action", None),
                                         ("artifact_format", "onnx"), ("artifact_format", None)])
def test_literals_checked(field, value):
    with pytest.raises(RegistryError) as e:
        update(**{field: value})
    assert isinstance(e.value, InputError) and e.value.what == field


def test_exactly_one_artifact_location():
    with pytest.raises(RegistryError):
        update(artifact_inline=None)
    with pytest.raises(RegistryError):
        update(artifact_uri="file:///a.json")
    with pytest.raises(RegistryError):
        update(artifact_inline=None, artifact_uri="s3://bucket/a.json")


# ---------------------------------------------------------------- linear model artifact

def _trained() -> tuple[BatchLogisticRegression, np.ndarray]:
    rng = np.random.default_rng(7)
    X = np.hstack([rng.normal(size=(400, 3)), rng.integers(0, 2, size=(400, 1))])
    y = (X[:, 0] + 0.5 * X[:, 3] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    model = BatchLogisticRegression(3, 1)
    model.learn_batch(X, y)
    return model, X


@pytest.mark.parametrize("limit", [900_000, 0])
def test_linear_model_round_trips(tmp_path, limit):
    model, X = _trained()
    data, sha = make_artifact(model.state())
    inline, uri, sha2 = store_artifact(data, tmp_path, "clicks", 5, limit=limit)
    assert sha2 == sha and (inline is None) == (limit == 0)
    u = update(version=5, parent_version=4, artifact_inline=inline, artifact_uri=uri,
               artifact_sha256=sha)
    got, blob = verify_with_artifact(sign(u, KEY), KEY)
    loaded = load_artifact(got, blob)
    assert loaded.state() == model.state()
    np.testing.assert_array_equal(loaded.predict_proba_batch(X), model.predict_proba_batch(X))


def test_make_artifact_refuses_other_dicts():
    with pytest.raises(RegistryError):
        make_artifact({"kind": "other"})
    with pytest.raises(RegistryError):
        make_artifact([1, 2])


def test_load_artifact_refuses_pickle_and_bad_state():
    u = update(artifact_format="river.pickle")
    with pytest.raises(RegistryError):
        load_artifact(u, ART)
    u = update()  # ART is JSON but not a model state
    with pytest.raises(VerificationError) as e:
        load_artifact(u, ART)
    assert reason(e) == "malformed"


# ---------------------------------------------------------------- version rules

def test_successor_rules():
    v1 = update(version=1, parent_version=None)
    check_successor(None, v1)
    v2 = update(version=2, parent_version=1)
    check_successor(v1, v2)
    canary = update(version=3, parent_version=2, action="canary")
    check_successor(v2, canary)
    check_successor(canary, update(version=4, parent_version=2))  # champion is still 2
    check_successor(canary, update(version=4, parent_version=2, action="canary"))
    check_successor(v2, update(version=3, parent_version=1, action="rollback"))


@pytest.mark.parametrize("previous,new", [
    (update(version=2, parent_version=1), update(version=2, parent_version=1)),   # not monotonic
    (update(version=2, parent_version=1), update(version=1, parent_version=None)),
    (update(version=2, parent_version=1), update(version=3, parent_version=1)),   # stale parent
    (update(version=2, parent_version=1), update(version=3, parent_version=None)),
    (update(version=3, parent_version=2, action="canary"), update(version=4, parent_version=3)),
    (update(version=2, parent_version=1), update(version=3, parent_version=2, action="rollback")),
    (update(version=2, parent_version=1), update(version=3, parent_version=None, action="rollback")),
    (update(version=2, parent_version=1), update(name="other", version=3, parent_version=2)),
    (None, update(version=1, parent_version=None, action="rollback")),
    (None, update(version=2, parent_version=1)),
])
def test_successor_violations(previous, new):
    with pytest.raises(RegistryError):
        check_successor(previous, new)


def test_update_is_frozen():
    u = update()
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.version = 9  # type: ignore[misc]
