"""The joiner's columnar Arrow encoder agrees with the validating row encoder."""

from __future__ import annotations

from ct_stream.join import Example


def test_examples_to_arrow_matches_the_validating_row_encoder():
    from ct_stream.join.arrow import examples_to_arrow
    from ct_stream.records import RecordSchema, decode_examples, encode_examples, examples_to_batch

    schema = RecordSchema(features={"x": "float", "n": "int", "flag": "bool", "c": "str"}, label_type="binary")
    examples = [Example(id=f"e{i}", event_ts=1.0 + i, label_ts=None if i % 2 else 2.0 + i, label=bool(i % 3),
                        outcome="expired" if i % 2 else "joined", served_version=None if i % 4 else 3,
                        prediction=0.25 if i % 5 else None, source_partition=1, source_offset=100 + i,
                        features={"x": i / 3, "n": i, "flag": i % 2 == 0, "c": "abc"[i % 3]})
               for i in range(50)]
    rows = [{**{k: getattr(e, k) for k in ("id", "event_ts", "label_ts", "label", "outcome", "served_version",
                                          "prediction", "source_partition", "source_offset")}, **e.features}
            for e in examples]
    fast = examples_to_arrow(examples, schema)
    assert fast.equals(examples_to_batch(rows, schema))
    assert decode_examples(encode_examples(fast), schema).equals(fast)


def test_example_messages_keep_every_row_in_order_under_the_byte_cap():
    from ct_stream.join.arrow import example_messages
    from ct_stream.records import RecordSchema, decode_examples

    schema = RecordSchema(features={"c": "str"}, label_type="binary", max_string_length=100_000)
    sizes = [10, 3000, 60_000, 10, 150_000, 20, 5]  # one row alone is over the cap
    examples = [Example(f"e{i}", 1.0, 2.0, True, "joined", None, None, 0, i, {"c": "x" * sizes[i % len(sizes)]})
                for i in range(40)]
    out = list(example_messages([e.row() for e in examples], schema, max_bytes=100_000, max_rows=16))
    assert [Example.from_row(r) for rows, _ in out for r in rows] == examples
    for rows, message in out:
        assert len(rows) <= 16
        assert len(message) <= 100_000 or len(rows) == 1
        assert decode_examples(message, schema).column("id").to_pylist() == [r[0][0] for r in rows]
    assert any(len(m) > 100_000 for _, m in out)  # the oversize row came alone


def test_joiner_rows_to_arrow_match_the_validating_row_encoder():
    """The joiner's own rows (values in its feature-name order, transposed in C), mixed
    with rows of events that kept their own features dict (the per-row path), encode as
    the validating encoder encodes the same examples."""
    from ct_stream.join import Input, PartitionJoiner
    from ct_stream.join.arrow import rows_to_arrow
    from ct_stream.records import Event, Label, RecordSchema, examples_to_batch
    from ct_stream.topology import JoinSpec

    schema = RecordSchema(features={"x": "float", "n": "int", "flag": "bool", "c": "str"}, label_type="binary")
    j = PartitionJoiner(0, JoinSpec(max_label_delay=10, grace=1, default_label=False), clock=lambda: 0.0)
    inputs = []
    for i in range(40):
        # the joiner learns the order n, x, c, flag; event 7 has another order, so it keeps its dict
        feats = {"n": i, "x": i / 7, "c": "ab"[i % 2], "flag": i % 3 == 0}
        if i == 7:
            feats = {"x": i / 7, "flag": False, "c": "b", "n": i}
        inputs.append(Input("event", Event(f"e{i}", 100.0 + i, feats, None if i % 4 else 2, 0.5), i))
        if i % 3:
            inputs.append(Input("label", Label(f"e{i}", 100.5 + i, i % 2 == 0), i))
    inputs.append(Input("label", Label("late-event", 141.0, True), 99))
    inputs.append(Input("event", Event("late-event", 141.0, {"n": 1, "x": 0.0, "c": "a", "flag": True}), 99))
    inputs.append(Input("event", Event("end", 200.0, {"n": 0, "x": 0.0, "c": "a", "flag": True}), 100))
    out = j.process(inputs)
    assert {"joined", "expired"} <= {r[4] for r in out.rows}
    dicts = [{**{k: getattr(e, k) for k in ("id", "event_ts", "label_ts", "label", "outcome", "served_version",
                                           "prediction", "source_partition", "source_offset")}, **e.features}
             for e in out.examples]
    expected = examples_to_batch(dicts, schema)
    assert rows_to_arrow(out.rows, schema).equals(expected)  # mixed: the per-row path
    packed = [r for r in out.rows if r[1] is not None and len(r[0]) == 9]
    assert 0 < len(packed) < len(out.rows)
    assert rows_to_arrow(packed, schema).equals(expected.filter(  # all packed: the transposition
        [r[1] is not None and len(r[0]) == 9 for r in out.rows]))
