"""The native data path (``ct_stream._native``, built from ``native/``) against the
Python reference: for every record the native decoder takes it gives exactly what
:func:`decode_event` / :func:`decode_label` give (values and their types, dict order),
and the records it leaves to Python are decoded there, so a batch decodes the same with
and without it. JSON text is written here byte by byte (whitespace, number spellings,
escapes, duplicate keys), so the strict scanner is compared with orjson too."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
from decimal import Context, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ct_stream.records as records
from ct_stream.errors import CodecError
from ct_stream.join import META_KEY, Input, JoinOutput, PartitionJoiner
from ct_stream.join.changelog import ChangelogWriter
from ct_stream.join.joiner import _OWN_NAMES
from ct_stream.records import (Event, Label, RecordSchema, Reject, decode_event, decode_events, decode_label,
                               decode_labels, encode_event, encode_label)
from tests.test_join import POOL, FakeClock, FakeMessage, apply_op, messy_inputs, spec, split

pytestmark = pytest.mark.skipif(records._native is None, reason="ct_stream._native is not built (no cargo)")

SCHEMAS = [
    RecordSchema(features={"price": "float", "qty": "int", "member": "bool", "country": "str"}, label_type="binary"),
    RecordSchema(features={"x": "float"}, label_type="multiclass", max_string_length=6),
    RecordSchema(features={"x": "float", "y": "float"}, label_type="regression", max_abs_value=1e17,
                 id_field="key", ts_field="time"),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pure(schema: RecordSchema) -> RecordSchema:
    """``schema`` without the native decoder: the Python path."""
    copy = dataclasses.replace(schema)
    object.__setattr__(copy, "_native_decoder", None)
    return copy


def typed(record: Any) -> Any:
    """A record as nested (type, value) pairs: ``1 == 1.0`` and ``-0.0 == 0.0`` for ==, not here."""
    if isinstance(record, (Event, Label)):
        return type(record).__name__, [(f.name, typed(getattr(record, f.name))) for f in dataclasses.fields(record)]
    if isinstance(record, dict):
        return [(k, typed(v)) for k, v in record.items()]
    if isinstance(record, float):
        return "float", repr(record)
    return type(record).__name__, record


@pytest.mark.parametrize("schema", SCHEMAS, ids=["binary", "multiclass", "regression"])
def test_records_in_the_contract_form_are_decoded_natively(schema: RecordSchema) -> None:
    """What producers write (the contract's own encoder) takes the native path, not the
    Python fallback (else the comparisons below would compare Python with itself)."""
    names = list(schema.features)
    samples = {"float": [0.5, -3.25, 12.0], "int": [3, -7, 0], "bool": [True, False, True], "str": ["FR", "é", ""]}
    events = [Event(f"e{k}", 1_700_000_000.0 + k,
                    {n: samples[schema.features[n]][k] for n in names},
                    None if k == 0 else k, None if k == 0 else ("b" if schema.label_type == "multiclass" else 0.25))
              for k in range(3)]
    values = [encode_event(e, schema) for e in events]
    got, missing = schema._native_decoder.events(values)
    assert missing == 0 and [typed(e) for e in got] == [typed(e) for e in events]
    label = {"binary": True, "multiclass": "cat", "regression": -2.5}[schema.label_type]
    labels = [Label(f"e{k}", 1_700_000_000.5 + k, label) for k in range(3)]
    got, missing = schema._native_decoder.labels([encode_label(x, schema) for x in labels])
    assert missing == 0 and [typed(x) for x in got] == [typed(x) for x in labels]


def test_a_module_older_than_its_sources_is_found(tmp_path: Any) -> None:
    """An editable install does not rebuild the extension: ct_stream.native warns at
    import when a crate file changed after the module was built (mtimes set, no sleep)."""
    import os

    from ct_stream.native import stale_sources

    crate, built = tmp_path / "native", tmp_path / "_native.so"
    (crate / "src").mkdir(parents=True)
    for f in (crate / "Cargo.toml", crate / "src" / "lib.rs", crate / "src" / "json.rs", built):
        f.write_text("x")
        os.utime(f, (1000, 1000))
    assert stale_sources(built, crate) == []
    os.utime(crate / "src" / "json.rs", (1001, 1001))
    assert stale_sources(built, crate) == [crate / "src" / "json.rs"]
    os.utime(built, (1002, 1002))
    assert stale_sources(built, crate) == []
    assert stale_sources(built, tmp_path / "no-crate") == []  # an installed package has no crate beside it


# ------------------------------------------------------------------ JSON text, by hand

@st.composite
def ws(draw: Any) -> str:
    return draw(st.sampled_from(["", "", "", " ", "\n", "\t ", "\r\n"]))


BROKEN_NUMBERS = ["1e400", "-1e400", "9223372036854775808", "18446744073709551616", "1.", ".5", "+1", "0x10", "NaN",
                  "1e", "1e+", "--1", "01"]


@st.composite
def number_text(draw: Any, value: float | int, messy: bool) -> str:
    """One spelling of ``value``; when ``messy``, now and then not JSON or out of range."""
    if isinstance(value, int):
        forms = [str(value), str(value), f"{value}.0", f"{value}e0", f"{value}E+0"]
        if value == 0:
            forms += ["-0", "-0.0", "0e-5"]
    else:
        forms = [repr(value), repr(value), f"{value:e}", f"{value:E}", f"{value:.17g}", f"{value:.3f}"]
    if messy and draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(BROKEN_NUMBERS))
    return draw(st.sampled_from(forms))


@st.composite
def string_text(draw: Any, value: str, messy: bool) -> str:
    """``value`` as a JSON string, some characters escaped; when ``messy``, now and then broken."""
    out = []
    for ch in value:
        how = draw(st.integers(0, 9))
        if ch in '"\\' or ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch) if how < 5
                       else {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}.get(ch, "\\u%04x" % ord(ch)))
        elif how == 0 and ord(ch) < 0x10000:
            out.append("\\u%04X" % ord(ch))
        elif how == 1 and ch == "/":
            out.append("\\/")
        else:
            out.append(ch)
    text = '"' + "".join(out) + '"'
    broken = draw(st.integers(0, 20)) if messy else -1
    if broken == 0:
        text = text[:-1] + '\\ud800"'  # a lone surrogate
    elif broken == 1:
        text = text[:-1] + '\x01"'  # a raw control character
    elif broken == 2:
        text = text[:-1] + '\\q"'  # no such escape
    elif broken == 3:
        text = text[:-1] + '\\ud83d\\ude00"'  # an escaped surrogate pair (valid: left to Python)
    return text


@st.composite
def value_text(draw: Any, value: Any, messy: bool) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return draw(number_text(value, messy))
    if isinstance(value, str):
        return draw(string_text(value, messy))
    if isinstance(value, list):
        return "[" + ",".join(draw(ws()) + draw(value_text(v, messy)) for v in value) + "]"
    items = list(value.items())
    if items and draw(st.integers(0, 10)) == 0:  # a key twice: the last one counts (orjson)
        k, v = draw(st.sampled_from(items))
        items.insert(0, (k, draw(scalars) if messy else v))
    return "{" + ",".join(draw(ws()) + draw(string_text(k, messy)) + draw(ws()) + ":" + draw(ws())
                          + draw(value_text(v, messy)) for k, v in items) + draw(ws()) + "}"


numbers = (st.floats(-1e3, 1e3) | st.integers(-10**6, 10**6)
           | st.sampled_from([0, 0.0, -0.0, 2**53, 2**53 + 1, -(2**53) - 1, 1e15, 1e15 + 1, 10**17, 2**63 - 1,
                              5e-324, 1.7976931348623157e308, 0.1, 1 / 3]))
texts = st.text(max_size=8) | st.sampled_from(["", "FR", "é", "a\"b", "x/y", "\\", "\U0001F600", "tab\tin",
                                               "1234567"])
scalars = st.none() | st.booleans() | numbers | texts
common = {"float": st.floats(-1e3, 1e3) | st.integers(-10**6, 10**6), "int": st.integers(-10**6, 10**6),
          "bool": st.booleans(), "str": st.text(max_size=6)}
labels = {"binary": st.booleans(), "multiclass": st.text(min_size=1, max_size=6),
          "regression": st.floats(-1e3, 1e3) | st.integers(-10**6, 10**6)}


@st.composite
def record_text(draw: Any, schema: RecordSchema) -> bytes:
    """A record for ``schema``: half of them in the common form, spelled in many ways
    (whitespace, number forms, escapes, key order, duplicate keys, other keys); the
    others *messy*: fields missing, of other types, out of range, undeclared, broken."""
    messy = draw(st.booleans())

    def pick(good: Any) -> Any:
        return draw(scalars if messy and draw(st.integers(0, 3)) == 0 else good)

    feats = {n: pick(common[t]) for n, t in schema.features.items()}
    if messy and draw(st.integers(0, 5)) == 0:
        feats.pop(draw(st.sampled_from(list(feats))))
    if messy and draw(st.integers(0, 5)) == 0:
        feats["extra"] = draw(scalars)
    feats = dict(draw(st.permutations(list(feats.items()))))
    mc = schema.label_type == "multiclass"
    obj: dict[str, Any] = {
        schema.id_field: pick(st.sampled_from(["a", "b-1", "é", "a\"q"]) | st.integers(-10**6, 10**6)),
        schema.ts_field: pick(st.floats(0, 2e9) | st.integers(0, 2 * 10**9)),
        "features": feats if not messy or draw(st.integers(0, 8)) else draw(scalars),
        "served_version": pick(st.none() | st.integers(0, 5)),
        "prediction": pick(st.none() | (st.text(max_size=6) if mc else st.floats(-1, 1) | st.integers(-3, 3))),
        "label": pick(labels[schema.label_type]),
    }
    for key in list(obj):
        if draw(st.integers(0, 10)) == 0 and (messy or key in ("served_version", "prediction")):
            del obj[key]
    if draw(st.integers(0, 4)) == 0:
        obj["other"] = draw(st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                                         | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=5))
    obj = dict(draw(st.permutations(list(obj.items()))))
    text = draw(ws()) + draw(value_text(obj, messy)) + draw(ws())
    if messy and draw(st.integers(0, 20)) == 0:
        text += draw(st.sampled_from(["x", ",", "}", "{}"]))
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(st.sampled_from(SCHEMAS).flatmap(lambda s: st.tuples(st.just(s), st.lists(record_text(s), max_size=30))))
def test_native_decoding_equals_the_python_reference(case: tuple[RecordSchema, list[bytes]]) -> None:
    schema, values = case
    for kind, native, one in (("event", schema._native_decoder.events, decode_event),
                              ("label", schema._native_decoder.labels, decode_label)):
        got, missing = native(values)
        assert len(got) == len(values) and missing == sum(r is None for r in got)
        for value, r in zip(values, got):
            expected = one(value, schema)
            if r is not None:
                assert type(expected) is not Reject, value
                assert typed(r) == typed(expected), value
            else:  # left to Python: only what the native decoder documents it leaves
                assert type(expected) is Reject or not _common_form(value, schema, kind), value
    reference = pure(schema)
    for batch in (decode_events, decode_labels):
        a, b = batch(values, schema), batch(values, reference)
        assert [typed(r) for r in a[0]] == [typed(r) for r in b[0]] and a[1] == b[1]


#: Decimals whose quotient in ``exact_float`` (native/src/json.rs) ends in exactly half a
#: unit of the rounding place with a remainder: without the remainder bit, those whose
#: kept part is even would round down (ties to even) where the true value rounds up.
#: Found by a search over random 54-56-bit mantissas and powers 10^-18 to 10^-22 (about
#: one in 130,000 is one; the quotient and remainder computed with Python's integers).
STICKY = [
    "38346329339060051e-22", "18016999484565035e-22", "43624833226512108e-22", "44052178140183567e-22",
    "28896795788062251e-22", "16018959163200969e-22", "48911005989139349e-22", "17301632272524374e-22",
    "32754682769892838e-22", "52826797426774589e-22", "17747236827612632e-22", "46672780951612696e-22",
    "48680153920192024e-22", "67084981793683194e-21", "20462105011397135e-22", "23308198742926506e-22",
    "43496041420577213e-22", "28786227965134402e-22", "37357822383358289e-22", "57402813164699414e-22",
]


def _float_spellings(seed: int, n: int) -> list[str]:
    """Float texts for the scanner's own conversion (native/src/json.rs, ``exact_float``):
    mantissas of 15 to 19 digits (above and below 2^53) with powers of ten to +-22 and
    beyond, the 19-digit decimals just under, at and over the midpoint of two adjacent
    doubles (where a rounding error shows), Python's shortest spellings, and digits with
    the point anywhere."""
    rng = random.Random(seed)
    exact = Context(prec=60)
    out = []
    for _ in range(n):
        nd = rng.randrange(15, 21)
        out.append(f"{rng.randrange(10 ** (nd - 1), 10 ** nd)}e{rng.randrange(-24, 25)}")
        x = rng.uniform(1e-3, 1e6)
        mid = exact.divide(exact.add(Decimal(x), Decimal(math.nextafter(x, math.inf))), 2)
        digits, exp = f"{mid:.18e}".split("e")
        out.extend(f"{int(digits.replace('.', '')) + d}e{int(exp) - 18}" for d in (-1, 0, 1))
        out.append(repr(rng.gauss(0, 1) * 10 ** rng.randrange(-4, 6)))
        ds = str(rng.randrange(10**15, 10**19))
        p = rng.randrange(len(ds))
        out.append(("-" if rng.random() < 0.5 else "") + (ds[:p] or "0") + "." + ds[p:])
    return out


def test_the_scanners_float_conversion_is_correctly_rounded() -> None:
    schema = SCHEMAS[2]  # floats within 1e17
    texts = _float_spellings(seed=11, n=4000) + STICKY
    values = [f'{{"key":"a","time":1,"features":{{"x":{t},"y":0.5}}}}'.encode() for t in texts]
    got, _ = schema._native_decoder.events(values)
    decoded = 0
    for text, value, event in zip(texts, values, got):
        expected = decode_event(value, pure(schema))
        if event is None:  # out of range: a reject from Python too
            assert type(expected) is Reject, text
            continue
        decoded += 1
        assert repr(event.features["x"]) == repr(float(text)), text
    assert decoded > 20_000


class _Big:
    """An integer token the native decoder leaves to Python (beyond 2**53)."""


def _common_form(value: bytes, schema: RecordSchema, kind: str) -> bool:
    """The form the native decoder takes (native/src/lib.rs), written again as a spec:
    JSON orjson reads, no escaped surrogate, no integer beyond 2**53, "features" once, a
    numeric ts, an id that is a string or an integer, the declared features exactly with
    their own JSON types (an int for a float the only conversion), a served_version that
    is null or an int, a prediction and label of the label type's own JSON type."""
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if b"\\ud" in value.lower():
        return False
    tops: list[list[str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        tops.append([k for k, _ in items])
        return dict(items)

    obj = json.loads(value, parse_int=lambda t: int(t) if abs(int(t)) <= 2**53 else _Big(), object_pairs_hook=pairs)
    if not isinstance(obj, dict) or not _no_big(obj):
        return False
    num = (int, float)
    rid, ts = obj.get(schema.id_field), obj.get(schema.ts_field)
    if type(rid) not in (str, int) or type(ts) not in num:
        return False
    mc = schema.label_type == "multiclass"
    if kind == "label":
        return type(obj.get("label")) is {"binary": bool, "multiclass": str, "regression": None}[schema.label_type] \
            or (schema.label_type == "regression" and type(obj.get("label")) in num)
    feats, pred = obj.get("features"), obj.get("prediction")
    if tops[-1].count("features") != 1 or type(feats) is not dict or set(feats) != set(schema.features):
        return False
    allowed = {"float": num, "int": (int,), "bool": (bool,), "str": (str,)}
    return all(type(feats[n]) in allowed[t] for n, t in schema.features.items()) \
        and type(obj.get("served_version")) in (type(None), int) \
        and type(pred) in ((type(None), str) if mc else (type(None), int, float))


def _no_big(obj: Any) -> bool:
    if isinstance(obj, _Big):
        return False
    if isinstance(obj, dict):
        return all(map(_no_big, obj.values()))
    if isinstance(obj, list):
        return all(map(_no_big, obj))
    return True


@pytest.mark.parametrize("text", [
    b'{"id":"a","ts":1,"features":{"x":1e400}}',  # orjson refuses it: not JSON
    b'{"id":"a","ts":1,"features":{"x":18446744073709551616}}',  # orjson: a float; here: Python's
    b'{"id":9223372036854775808,"ts":1,"features":{"x":1}}',  # beyond i64: Python's
    b'{"id":"\\ud83d\\ude00","ts":1,"features":{"x":1}}',  # an escaped surrogate pair: Python's
    b'{"id":"a","ts":1,"features":{"x":1},"features":{"x":2}}',  # features twice: Python's
    b'{"id":"a","ts":9007199254740993,"features":{"x":1}}',  # an int ts not exact as a float: Python's
    b'{"id":"a","ts":1,"features":{"x":1,"y":2}}',  # an undeclared feature: Python's (it drops it)
    b'{"id":"a","ts":1,"features":{"x":1}} x',  # trailing bytes: not JSON
    b'[{"id":"a","ts":1,"features":{"x":1}}]',  # not an object
])
def test_what_the_scanner_leaves_to_python_decodes_as_python_does(text: bytes) -> None:
    schema = SCHEMAS[1]
    got, missing = schema._native_decoder.events([text])
    assert got == [None] and missing == 1
    assert decode_events([text], schema) == decode_events([text], pure(schema))


def test_duplicate_keys_take_the_last_value_as_orjson_does() -> None:
    schema = SCHEMAS[1]
    text = b'{"id":"a","id":"b","ts":1,"ts":2.5,"features":{"x":1,"x":2},"prediction":"p","prediction":null}'
    (event,), missing = schema._native_decoder.events([text])
    assert missing == 0 and typed(event) == typed(decode_event(text, schema))
    assert (event.id, event.ts, event.features, event.prediction) == ("b", 2.5, {"x": 2.0}, None)


def test_a_batch_with_records_left_to_python_keeps_indices_and_order() -> None:
    schema = SCHEMAS[0]
    good = encode_event(Event("a", 1.0, {"price": 1.0, "qty": 1, "member": True, "country": "FR"}), schema)
    values: list[Any] = [good, b"not json", None, good.replace(b'"a"', b'"b"'),
                         good.replace(b'"qty":1', b'"qty":1.0'), "a str"]
    events, rejects = decode_events(values, schema)
    assert [e.id for e in events] == ["a", "b", "a"] and events[2].features["qty"] == 1
    assert [(i, r.reason.value) for i, r in rejects] == [(1, "undecodable"), (2, "undecodable"), (5, "undecodable")]
    assert decode_events(values, schema) == decode_events(values, pure(schema))


def test_a_pickled_schema_keeps_a_working_decoder() -> None:
    """The trainer pickles its topology (and so the record schema) for the retrain process."""
    schema = pickle.loads(pickle.dumps(SCHEMAS[2]))
    value = b'{"key":"k","time":2,"features":{"x":1,"y":-0.0},"label":3}'
    (event,), missing = schema._native_decoder.events([value])
    assert missing == 0 and event == Event("k", 2.0, {"x": 1.0, "y": -0.0}) and math.copysign(1, event.features["y"]) < 0
    assert schema._native_decoder.labels([value])[0][0] == Label("k", 2.0, 3.0)


def test_items_into_refuses_a_kind_that_is_not_its_queue() -> None:
    merger = records._native.Merger()  # type: ignore[union-attr]
    decoder = RecordSchema(features={"x": "float"}, label_type="binary")._native_decoder
    with pytest.raises(ValueError, match='kind "label" with event=True; allowed: "event"'):
        decoder.items_into(merger, "label", [], True)
    assert decoder.items_into(merger, "event", [], True) == (0, [])


def test_bad_decoder_arguments_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="label_type 'ordinal'; allowed: 'binary', 'multiclass' or 'regression'"):
        records._native.Decoder(["x"], [0], "ordinal", "id", "ts", 10, 10, 1.0, 1, Event, Label)
    with pytest.raises(ValueError, match="as many codes"):
        records._native.Decoder(["x"], [0, 1], "binary", "id", "ts", 10, 10, 1.0, 1, Event, Label)


# ------------------------------------------------------------- the change log, encoded

@st.composite
def joiner_histories(draw: Any) -> tuple[str, list[Any]]:
    """A policy and ops for a joiner: batches of messy inputs (tests/test_join.py) with
    their ids renamed (quotes, escapes, NUL, non-ASCII; an id starting with NUL makes
    every id escape-checked) and some feature values made awkward, and between them
    drains, snapshots, capacity expiries or idle ticks."""
    inputs = draw(messy_inputs())
    names = draw(st.lists(st.text(min_size=1, max_size=6) | st.sampled_from(['"q"', "a\\b", "\x00n", "é", "\n"]),
                          min_size=13, max_size=13))
    odd = draw(st.sampled_from([None, 2**63 - 1, -(2**63), "x\x01\"y", 1e300, -0.0, 5e-324, {"k": [1, None]}]))
    floats = draw(st.booleans())  # all-float features (float64 text in the changelog) but where odd is put
    renamed = []
    for inp in inputs:
        rec = inp.record
        k = POOL.index(rec.id)
        i = names[k] if k < len(names) else rec.id  # the pool's long ids stay as they are
        if isinstance(rec, Event):
            feats = {k: float(v) if floats and type(v) in (int, float, bool) else 0.5 if floats else v
                     for k, v in rec.features.items()}
            if odd is not None and draw(st.integers(0, 3)) == 0:
                feats["x"] = odd
            rec = Event(i, rec.ts, feats, rec.served_version, rec.prediction)
        else:
            rec = Label(i, rec.ts, rec.label)
        renamed.append(Input(inp.kind, rec, inp.offset))
    batches = split(renamed, draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=8)))
    ops = [op for batch in batches for op in (batch, draw(st.sampled_from(["drain", "drain", "snapshot", "capacity",
                                                                           6.0, ""])))]
    return draw(st.sampled_from(["negative", "drop", "dlq"])), ops + ["drain"]


@FUZZ
@given(joiner_histories())
def test_the_encoded_drain_and_snapshot_decode_to_what_python_gives(history: tuple[str, list[Any]]) -> None:
    """Two joiners fed the same: at every drain (snapshot), the native encoder's pairs
    decode to the change log ``drain_changes`` (``snapshot``) gives, through JSON, types
    and order included, and the joiners stay alike (the drains end the same way)."""
    policy, ops = history
    a = PartitionJoiner(0, spec(policy), clock=FakeClock())
    b = PartitionJoiner(0, spec(policy), clock=FakeClock())
    drains = 0
    for op in ops:
        if op == "snapshot":
            encoded = a.snapshot_encoded()
            assert isinstance(encoded, list)
            reference = orjson.loads(orjson.dumps(list(b.snapshot().items())))
            assert [typed(x) for x in map(orjson.loads, encoded)] == [typed(x) for x in reference]
        elif op == "capacity":
            assert a.expire_oldest(1) == b.expire_oldest(1)
        elif op == "drain":
            encoded = a.drain_encoded()
            reference = orjson.loads(orjson.dumps(list(b.drain_changes().items())))
            assert isinstance(encoded, list)  # natively encoded (every value here is one it takes)
            decoded = [orjson.loads(p) for p in encoded]
            assert [typed(x) for x in decoded] == [typed(x) for x in reference]
            drains += 1
        else:
            assert apply_op(a, op, JoinOutput()) == apply_op(b, op, JoinOutput())
    assert drains and a.snapshot() == b.snapshot() and a.drain_changes() == b.drain_changes()


def test_a_value_the_native_encoder_does_not_take_drains_through_python() -> None:
    """An integer beyond int64 in an event's own features: the reference path gives the
    changes as a dict (whose encoding then fails as it always did: CodecError)."""
    j = PartitionJoiner(0, spec("negative"), clock=FakeClock())
    j.process([Input("event", Event("a", 1.0, {"x": 2**70}), 0)])
    assert isinstance(j.snapshot_encoded(), dict)
    changes = j.drain_encoded()
    assert isinstance(changes, dict) and changes["a"][4] == (2**70,)
    with pytest.raises(CodecError, match="does not encode"):
        ChangelogWriter(0).records(changes, 1, dict)
    assert j.drain_encoded() == []  # the drain happened


def test_without_the_native_module_drain_and_snapshot_are_pythons(monkeypatch: pytest.MonkeyPatch) -> None:
    import ct_stream.join.joiner as joiner_module

    monkeypatch.setattr(joiner_module, "_native", None)
    j = PartitionJoiner(0, spec("negative"), clock=FakeClock())
    j.process([Input("event", Event("a", 1.0, {"x": 2.0}), 0)])
    assert j.snapshot_encoded() == j.snapshot()
    changes = j.drain_encoded()
    assert isinstance(changes, dict) and set(changes) == {"a", META_KEY}


# --------------------------------------------------------------- example rows to Arrow

def _feature_values(ftype: str, odd: bool) -> st.SearchStrategy[Any]:
    """Values of a declared feature type, and (``odd``) values of other types too."""
    right = {"float": st.floats(), "int": st.integers(-2**63, 2**63 - 1), "bool": st.booleans(),
             "str": st.text(max_size=6)}[ftype]
    if not odd:
        return right
    return st.one_of(right, st.none(), st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.just("\ud800"))


@st.composite
def example_rows(draw: st.DrawFn, schema: RecordSchema, odd: bool, shapes: bool) -> list[Any]:
    """Rows shaped as the joiner makes them (``ExampleRow``: an event entry holding the
    values in the joiner's own feature-name order, the names tuple shared), with nulls
    where the example schema allows them; ``odd`` draws values of other types too (what
    ``pa.array`` converts or refuses, and the native path must leave to it), rows whose
    event kept its own features dict, rows with an equal but other names tuple, and rows
    in another name order."""
    names = tuple(draw(st.permutations(list(schema.features))))
    label = {"binary": st.booleans(), "multiclass": st.text(max_size=4),
             "regression": st.floats(allow_nan=False)}[schema.label_type]
    prediction = st.text(max_size=4) if schema.label_type == "multiclass" else st.floats()
    anything = st.one_of(st.none(), st.integers(-2**40, 2**40), st.floats(), st.booleans(), st.text(max_size=2))
    rows = []
    for _ in range(draw(st.integers(1, 20))):
        values = tuple(draw(_feature_values(schema.features[n], odd)) for n in names)
        pick = (lambda s: st.one_of(s, anything)) if odd else (lambda s: s)
        entry = (draw(pick(st.text(max_size=8))), draw(pick(st.floats())), draw(pick(st.integers(0, 2**63 - 1))),
                 draw(pick(st.none() | st.integers(-2**63, 2**63 - 1))), draw(pick(st.none() | prediction)), *values)
        shape = draw(st.integers(0, 5)) if shapes else 0
        row_names = names
        if shape == 1:  # an event that kept its own features dict
            entry = (*entry[:5], _OWN_NAMES, dict(zip(names, values)))
        elif shape == 2:  # equal names, another tuple
            row_names = tuple(list(names))
        elif shape == 3:  # a joiner that learnt another order
            row_names, entry = names[::-1], (*entry[:5], *values[::-1])
        rows.append((entry, row_names,
                     draw(pick(st.none() | st.floats())), draw(pick(label)),
                     draw(pick(st.sampled_from(records.OUTCOMES))), draw(pick(st.integers(0, 2**31 - 1)))))
    return rows


def _arrow_message(rows: list[Any], schema: RecordSchema) -> tuple[str, Any]:
    """The examples message of ``rows``, or the type of the error that refused them."""
    from ct_stream.join.arrow import rows_to_arrow

    try:
        return "message", records.encode_examples(rows_to_arrow(rows, schema))
    except Exception as e:  # noqa: BLE001 - the two paths must refuse alike
        return "error", type(e)


@pytest.mark.parametrize("schema", SCHEMAS, ids=["binary", "multiclass", "regression"])
@FUZZ
@given(data=st.data(), odd=st.booleans(), shapes=st.booleans())
def test_example_rows_encode_to_the_same_message_with_and_without_the_native_columns(
        schema: RecordSchema, data: st.DataObject, odd: bool, shapes: bool) -> None:
    """``rows_to_arrow`` on the joiner's rows: the native column builder gives the same
    examples message, byte for byte, as one ``pa.array`` call per column (NaN, -0.0,
    nulls, non-ASCII ids included); rows of the declared types take the native path, and
    a value of another type leaves the batch to ``pa.array``, which converts or refuses
    it as before."""
    import ct_stream.join.arrow as arrow

    rows = data.draw(example_rows(schema, odd, shapes))
    native = arrow._native
    assert native is not None
    answers: list[Any] = []

    class Spy:
        def example_columns(self, *args: Any) -> Any:
            answers.append(native.example_columns(*args))
            return answers[-1]

    arrow._native = Spy()  # type: ignore[assignment]
    try:
        with_native = _arrow_message(rows, schema)
    finally:
        arrow._native = native
    arrow._native = None
    try:
        reference = _arrow_message(rows, schema)
    finally:
        arrow._native = native
    assert with_native == reference
    assert len(answers) == 1
    if not odd and not shapes:
        assert answers[0] is not None and with_native[0] == "message"


# --------------------------------------------------------------- pending-event entries

@FUZZ
@given(names=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5, unique=True),
       features=st.dictionaries(st.sampled_from("abcdefg"), st.one_of(
           st.floats(), st.integers(), st.booleans(), st.none(), st.text(max_size=3),
           st.lists(st.integers(), max_size=2), st.tuples(st.integers()), st.tuples(st.lists(st.integers())),
           st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)),  # an untracked dict: not atomic
           max_size=7),
       proxy=st.booleans())
def test_native_event_entries_are_the_generated_packers_and_gc_untracked_as_cpython_would(
        names: list[str], features: dict[str, Any], proxy: bool) -> None:
    """``_event_codec``'s ``pack`` with the native data path (``_native.event_entry``)
    gives the generated Python packer's tuple, or the same KeyError (the first missing
    name), for dicts and other mappings; the tuple is left out of the cyclic collector
    exactly when CPython's collector would untrack the reference tuple (all values
    atomic or untracked tuples), checked by running a young collection."""
    import gc
    import types

    import ct_stream.join.joiner as joiner_module

    pack, _ = joiner_module._event_codec(tuple(names))
    native, joiner_module._native = joiner_module._native, None
    try:
        reference, _ = joiner_module._event_codec(tuple(names))  # the generated Python packer
    finally:
        joiner_module._native = native
    assert pack is not reference and native is not None
    mapping: Any = types.MappingProxyType(features) if proxy else features
    args = ("id", 1.5, 7, None, 0.25, mapping)
    gc.collect(0)  # the drawn tuples as the collector leaves them, before either packs them
    try:
        expected = reference(*args)
    except KeyError as e:
        with pytest.raises(KeyError) as raised:
            pack(*args)
        assert raised.value.args == e.args
        return
    entry = pack(*args)
    assert entry == expected and type(entry) is tuple
    gc.collect(0)
    assert gc.is_tracked(entry) == gc.is_tracked(expected)


class PolledMessage:
    """The parts of a polled message that the grouping reads (``error()``, ``topic()``,
    ``partition()``), and a serial number to follow it by."""

    def __init__(self, n: int, topic: str, partition: int, error: str | None) -> None:
        self.n, self._topic, self._partition, self._error = n, topic, partition, error

    def error(self) -> str | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["events", "labels"]), st.integers(0, 2), st.booleans(),
                          st.sampled_from([None, None, None, "eof"])), max_size=60))
def test_native_grouping_of_polled_messages_is_the_reference(spec_: list[tuple[str, int, bool, str | None]]) -> None:
    """``group_messages`` gives what ``ct_stream.kafka.group._group_messages`` gives: the
    messages by (topic, partition) in poll order, the errored ones apart in poll order;
    topic names that are equal but other str objects group together."""
    from ct_stream.kafka.group import _group_messages

    msgs = [PolledMessage(n, "".join(list(topic)) if fresh else topic, p, err)
            for n, (topic, p, fresh, err) in enumerate(spec_)]
    want_groups, want_errored = _group_messages(msgs)
    got_groups, got_errored = records._native.group_messages(msgs)  # type: ignore[union-attr]
    assert {k: [m.n for m in v] for k, v in got_groups.items()} == {k: [m.n for m in v] for k, v in want_groups.items()}
    assert list(got_groups) == list(want_groups)  # first-seen order, as the reference's dict
    assert [m.n for m in got_errored] == [m.n for m in want_errored]


@pytest.mark.parametrize("width", [3, 12, 13, 20])
def test_event_entries_hold_any_width_and_id_length_as_the_tuples_do(width: int) -> None:
    """``EventEntry`` keeps up to 12 features and ids of up to 22 bytes in its own memory
    and boxes the others (native/src/flat.rs): either way it equals the entry tuple the
    decoder packs for the same message, item by item, and its rows encode to the same
    Arrow columns."""
    from ct_stream.join.arrow import rows_to_arrow

    schema = RecordSchema(features={f"f{k}": "float" for k in range(width)}, label_type="binary")
    _, args = schema._native_decoder.__reduce__()
    flat, tuples = (records._native.Decoder(*args[:-1], f) for f in (True, False))  # type: ignore[union-attr]
    ids = ["a", "x" * 22, "é" * 11, "y" * 23, "z" * 200, 12345]
    messages = [FakeMessage(encode_event(Event(i, 1.5 + n, {f"f{k}": k / 7 - n for k in range(width)}, 3, 0.25),
                                         schema), n) for n, i in enumerate(ids)]
    got, missing = flat.items("event", messages, True)
    want, _ = tuples.items("event", messages, True)
    assert missing == []
    for (_, (_, entry, _, _)), (_, (_, tup, _, _)) in zip(got, want):
        assert type(entry) is records._native.EventEntry and type(tup) is tuple  # type: ignore[union-attr]
        assert entry == tup and list(entry) == list(tup) and len(entry) == len(tup)
        assert [entry[k] for k in range(-len(tup), len(tup))] == [tup[k] for k in range(-len(tup), len(tup))]
    names = tuple(schema.features)
    rows = [(p[1][1], names, 2.0, True, "joined", 0) for p in got]
    assert rows_to_arrow(rows, schema).equals(rows_to_arrow([(p[1][1], names, 2.0, True, "joined", 0) for p in want],
                                                            schema))



def test_feature_keys_are_taken_by_their_bytes_only_when_that_spelling_is_json() -> None:
    """The decoder takes a feature key that is spelled as the schema's name by comparing
    bytes (native/src/json.rs, ``members_expecting``), except for a name with a quote, a
    backslash or a control character, whose bytes between quotes are not its JSON: a
    record with such a key written raw is not JSON, and decodes as Python decodes it."""
    schema = RecordSchema(features={'a"b': "float", "c\\d": "float", "x": "float"}, label_type="binary")
    good = orjson.dumps({"id": "a", "ts": 1, "features": {'a"b': 1.5, "c\\d": 2.5, "x": 3.5}})
    escaped = b'{"id":"a","ts":1,"features":{"\\u0061\\"b":1.5,"c\\\\d":2.5,"\\u0078":3.5}}'
    raw = b'{"id":"a","ts":1,"features":{"a"b":1.5,"c\\d":2.5,"x":3.5}}'  # not JSON
    got, missing = schema._native_decoder.events([good, escaped, raw])
    assert missing == 1 and got[2] is None
    assert typed(got[0]) == typed(got[1]) == typed(decode_event(good, pure(schema)))
    assert type(decode_event(raw, schema)) is Reject
