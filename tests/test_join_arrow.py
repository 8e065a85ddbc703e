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
    out = list(example_messages(examples, schema, max_bytes=100_000, max_rows=16))
    assert [e for rows, _ in out for e in rows] == examples
    for rows, message in out:
        assert len(rows) <= 16
        assert len(message) <= 100_000 or len(rows) == 1
        assert decode_examples(message, schema).column("id").to_pylist() == [e.id for e in rows]
    assert any(len(m) > 100_000 for _, m in out)  # the oversize row came alone
