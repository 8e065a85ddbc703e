//! The joiner's change log, drained and encoded: what
//! `PartitionJoiner.drain_changes()` gives, as one JSON `[key, value]` pair (bytes) per
//! changed id, without building the Python lists and dicts in between
//! (`ct_stream/join/joiner.py` is the reference; tests/test_native.py compares them).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::fmt::Write;

/// Values nest at most this deep (features inside an entry inside a pair).
const MAX_DEPTH: u32 = 8;

/// Append `s` as a JSON string (the escapes orjson writes: `"`, `\`, control characters).
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Append `v` as JSON; `None` for a value this encoder does not take (the caller then
/// encodes in Python, which gives the reference answer or error).
fn write_value(out: &mut String, v: &Bound<'_, PyAny>, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    if v.is_none() {
        out.push_str("null");
    } else if let Ok(b) = v.downcast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
    } else if let Ok(f) = v.downcast_exact::<PyFloat>() {
        let x = f.value();
        if !x.is_finite() {
            return None;
        }
        out.push_str(ryu::Buffer::new().format_finite(x)); // shortest text that reads back as the same double
    } else if let Ok(i) = v.downcast_exact::<PyInt>() {
        let x: i64 = i.extract().ok()?;
        out.push_str(itoa::Buffer::new().format(x));
    } else if let Ok(s) = v.downcast_exact::<PyString>() {
        write_str(out, s.to_str().ok()?);
    } else if let Ok(t) = v.downcast_exact::<PyTuple>() {
        write_seq(out, t.iter(), depth)?;
    } else if let Ok(l) = v.downcast_exact::<PyList>() {
        write_seq(out, l.iter(), depth)?;
    } else if let Ok(d) = v.downcast_exact::<PyDict>() {
        out.push('{');
        for (n, (k, x)) in d.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_str(out, k.downcast_exact::<PyString>().ok()?.to_str().ok()?);
            out.push(':');
            write_value(out, &x, depth + 1)?;
        }
        out.push('}');
    } else {
        return None;
    }
    Some(())
}

fn write_seq<'py>(out: &mut String, items: impl Iterator<Item = Bound<'py, PyAny>>, depth: u32) -> Option<()> {
    out.push('[');
    for (n, x) in items.enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_value(out, &x, depth + 1)?;
    }
    out.push(']');
    Some(())
}

/// `,<item>` for each item of `e` from index `from` on (the rest of an entry's fields).
fn write_fields(out: &mut String, e: &Bound<'_, PyTuple>, idx: &[usize]) -> Option<()> {
    for &k in idx {
        out.push(',');
        write_value(out, &e.get_item(k).ok()?, 2)?;
    }
    Some(())
}

/// The features of event entry `e` as the change log stores them: the entry's own dict
/// (`e[5] is own`, 7 fields) or its values from index 5 on, as an array.
fn write_features(out: &mut String, e: &Bound<'_, PyTuple>, own: &Bound<'_, PyAny>) -> Option<()> {
    out.push(',');
    if e.len() == 7 && e.get_item(5).ok()?.is(own) {
        return write_value(out, &e.get_item(6).ok()?, 2);
    }
    out.push('[');
    for k in 5..e.len() {
        if k > 5 {
            out.push(',');
        }
        write_value(out, &e.get_item(k).ok()?, 3)?;
    }
    out.push(']');
    Some(())
}

/// A seq number (`None` -> null).
fn write_seq_number(out: &mut String, created: Option<i64>) {
    match created {
        Some(s) => {
            out.push(',');
            out.push_str(itoa::Buffer::new().format(s));
        }
        None => out.push_str(",null"),
    }
}

/// The `[key, value]` pairs of the change log `log` (see `PartitionJoiner.drain_changes`):
/// `None` when some value is not one this encoder takes (then the caller drains in Python).
#[pyfunction]
#[pyo3(signature = (log, log_seq, events, labels, done, own, joined))]
pub fn encode_changes<'py>(py: Python<'py>, log: &Bound<'py, PyList>, log_seq: i64, events: &Bound<'py, PyDict>,
                           labels: &Bound<'py, PyDict>, done: &Bound<'py, PyDict>, own: &Bound<'py, PyAny>,
                           joined: &str) -> PyResult<Option<Bound<'py, PyList>>> {
    // id -> sequence number of its latest new pending entry, in first-change order
    let changed = PyDict::new(py);
    let mut seq = log_seq;
    let mut escape = false;
    for c in log.iter() {
        if let Ok(e) = c.downcast_exact::<PyTuple>() {
            let i = e.get_item(0)?;
            changed.set_item(&i, seq)?;
            seq += 1;
        } else if !changed.contains(&c)? {
            changed.set_item(&c, py.None())?;
        }
    }
    for (i, _) in changed.iter() {
        let Ok(s) = i.downcast_exact::<PyString>() else { return Ok(None) };
        let Ok(s) = s.to_str() else { return Ok(None) };
        if s.contains('\0') {
            escape = true;
            break;
        }
    }
    let out = PyList::empty(py);
    let mut buf = String::with_capacity(256);
    for (i, created) in changed.iter() {
        buf.clear();
        let id = i.downcast_exact::<PyString>()?.to_str()?;
        let created: Option<i64> = created.extract()?;
        buf.push('[');
        if escape && id.starts_with('\0') {
            write_str(&mut buf, &format!("\0{id}"));
        } else {
            write_str(&mut buf, id);
        }
        buf.push(',');
        let ok = if let Some(e) = events.get_item(&i)? {
            let Ok(e) = e.downcast_exact::<PyTuple>() else { return Ok(None) };
            // ["e", created, offset, ts, features, served_version, prediction]
            buf.push_str("[\"e\"");
            write_seq_number(&mut buf, created);
            write_fields(&mut buf, e, &[2, 1]).and_then(|_| write_features(&mut buf, e, own))
                .and_then(|_| write_fields(&mut buf, e, &[3, 4]))
                .map(|_| buf.push(']'))
        } else if let Some(e) = labels.get_item(&i)? {
            let Ok(e) = e.downcast_exact::<PyTuple>() else { return Ok(None) };
            // ["l", created, offset, ts, label]
            buf.push_str("[\"l\"");
            write_seq_number(&mut buf, created);
            write_fields(&mut buf, e, &[2, 1, 3]).map(|_| buf.push(']'))
        } else if let Some(d) = done.get_item(&i)? {
            if let Ok(d) = d.downcast_exact::<PyTuple>() {
                // (state, event_ts, entry or None)
                buf.push_str("[\"d\"");
                let kept = d.get_item(2)?;
                let r = write_fields(&mut buf, d, &[0, 1]);
                if kept.is_none() {
                    r.map(|_| buf.push(']'))
                } else {
                    let Ok(e) = kept.downcast_exact::<PyTuple>() else { return Ok(None) };
                    // ["d", state, event_ts, offset, features, served_version, prediction]
                    r.and_then(|_| write_fields(&mut buf, e, &[2])).and_then(|_| write_features(&mut buf, e, own))
                        .and_then(|_| write_fields(&mut buf, e, &[3, 4])).map(|_| buf.push(']'))
                }
            } else {
                // a joined id: its event's ts
                buf.push_str("[\"d\",");
                write_str(&mut buf, joined);
                buf.push(',');
                write_value(&mut buf, &d, 2).map(|_| buf.push(']'))
            }
        } else {
            buf.push_str("null");
            Some(())
        };
        if ok.is_none() {
            return Ok(None);
        }
        buf.push(']');
        out.append(PyBytes::new(py, buf.as_bytes()))?;
    }
    Ok(Some(out))
}
