//! The joiner's change log, drained and encoded: what
//! `PartitionJoiner.drain_changes()` gives, as one JSON `[key, value]` pair (bytes) per
//! changed id, without building the Python lists and dicts in between
//! (`ct_stream/join/joiner.py` is the reference; tests/test_native.py compares them).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::fmt::Write;

use crate::flat::{EventEntry, Prediction};

/// Values nest at most this deep (features inside an entry inside a pair).
const MAX_DEPTH: u32 = 8;

/// Append `s` as a JSON string (the escapes orjson writes: `"`, `\`, control characters).
pub(crate) fn write_str(out: &mut String, s: &str) {
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
pub(crate) fn write_value(out: &mut String, v: &Bound<'_, PyAny>, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    if let Ok(f) = v.downcast_exact::<PyFloat>() {
        // floats first: an event entry is mostly float features
        let x = f.value();
        if !x.is_finite() {
            return None;
        }
        out.push_str(ryu::Buffer::new().format_finite(x)); // shortest text that reads back as the same double
    } else if v.is_none() {
        out.push_str("null");
    } else if let Ok(b) = v.downcast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
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

/// `,<item>` for the items of `e` at `idx`, in that order.
fn write_fields(out: &mut String, e: &Bound<'_, PyTuple>, idx: &[usize]) -> Option<()> {
    for &k in idx {
        out.push(',');
        write_value(out, &*e.get_borrowed_item(k).ok()?, 2)?;
    }
    Some(())
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Append `raw` as standard base64 with padding (what Python's `base64.b64encode` writes).
fn write_base64(out: &mut String, raw: &[u8]) {
    // SAFETY: only ASCII bytes (the base64 alphabet and '=') are appended, so `out` stays UTF-8
    let text = unsafe { out.as_mut_vec() };
    text.reserve(raw.len().div_ceil(3) * 4);
    let sym = |n: u32, shift: u32| BASE64[(n >> shift & 63) as usize];
    let full = raw.chunks_exact(3);
    let rest = full.remainder();
    for c in full {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        text.extend_from_slice(&[sym(n, 18), sym(n, 12), sym(n, 6), sym(n, 0)]);
    }
    match *rest {
        [a] => {
            let n = u32::from(a) << 16;
            text.extend_from_slice(&[sym(n, 18), sym(n, 12), b'=', b'=']);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            text.extend_from_slice(&[sym(n, 18), sym(n, 12), sym(n, 6), b'=']);
        }
        _ => {}
    }
}

/// The features of event entry `e` as the change log stores them: the entry's own dict
/// (`e[5] is own`, 7 fields), or its values from index 5 on: the base64 text of their
/// little-endian float64s when every one is a finite float, else an array.
fn write_features(out: &mut String, e: &Bound<'_, PyTuple>, own: &Bound<'_, PyAny>) -> Option<()> {
    out.push(',');
    if e.len() == 7 && e.get_item(5).ok()?.is(own) {
        return write_value(out, &e.get_item(6).ok()?, 2);
    }
    let mut raw: Vec<u8> = Vec::with_capacity(8 * e.len());
    for k in 5..e.len() {
        match e.get_borrowed_item(k).ok()?.downcast_exact::<PyFloat>() {
            Ok(f) if f.value().is_finite() => raw.extend_from_slice(&f.value().to_le_bytes()),
            _ => {
                raw.clear();
                break;
            }
        }
    }
    if !raw.is_empty() {
        out.push('"');
        write_base64(out, &raw);
        out.push('"');
        return Some(());
    }
    out.push('[');
    for k in 5..e.len() {
        if k > 5 {
            out.push(',');
        }
        write_value(out, &*e.get_borrowed_item(k).ok()?, 3)?;
    }
    out.push(']');
    Some(())
}

/// The fields of event entry `e` in a change-log value: `,<the items at before>,features,
/// served_version,prediction` (`before`: offset and ts for a pending event, the offset
/// alone for an expired negative).
pub(crate) fn write_event(out: &mut String, e: &Bound<'_, PyAny>, before: &[usize], own: &Bound<'_, PyAny>) -> Option<()> {
    if let Ok(f) = e.downcast_exact::<EventEntry>() {
        return write_flat_event(out, f.get(), before);
    }
    let e = e.downcast_exact::<PyTuple>().ok()?;
    write_fields(out, e, before)?;
    write_features(out, e, own)?;
    write_fields(out, e, &[3, 4])
}

/// `write_event` of a `flat::EventEntry`: the same text as for the tuple it stands for.
fn write_flat_event(out: &mut String, e: &EventEntry, before: &[usize]) -> Option<()> {
    let finite = |x: f64| if x.is_finite() { Some(x) } else { None };
    for &k in before {
        out.push(',');
        match k {
            1 => out.push_str(ryu::Buffer::new().format_finite(finite(e.ts)?)),
            2 => out.push_str(itoa::Buffer::new().format(e.offset)),
            _ => return None,
        }
    }
    // every value a float: the base64 form when all are finite (a non-finite one is not
    // written as JSON either)
    if !e.features.iter().all(|x| x.is_finite()) {
        return None;
    }
    let raw: Vec<u8> = e.features.iter().flat_map(|x| x.to_le_bytes()).collect();
    out.push_str(",\"");
    write_base64(out, &raw);
    out.push_str("\",");
    match e.served_version {
        Some(v) => out.push_str(itoa::Buffer::new().format(v)),
        None => out.push_str("null"),
    }
    out.push(',');
    match &e.prediction {
        Prediction::None => out.push_str("null"),
        Prediction::F(x) => out.push_str(ryu::Buffer::new().format_finite(finite(*x)?)),
        Prediction::S(s) => write_str(out, s),
    }
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

/// `[key, ` for joiner id `id`: an id that starts with NUL gets another in front, so no
/// id collides with the meta key (`"\0meta"`).
pub(crate) fn write_key(out: &mut String, id: &str) {
    out.clear();
    out.push('[');
    if id.starts_with('\0') {
        write_str(out, &format!("\0{id}"));
    } else {
        write_str(out, id);
    }
    out.push(',');
}

/// The value of pending entry `e`: `["e", seq, offset, ts, features, served_version,
/// prediction]` for an event, `["l", seq, offset, ts, label]` for a label.
pub(crate) fn write_pending(out: &mut String, event: bool, seq: Option<i64>, e: &Bound<'_, PyAny>,
                 own: &Bound<'_, PyAny>) -> Option<()> {
    if event {
        out.push_str("[\"e\"");
        write_seq_number(out, seq);
        write_event(out, e, &[2, 1], own)?;
    } else {
        out.push_str("[\"l\"");
        write_seq_number(out, seq);
        write_fields(out, e.downcast_exact::<PyTuple>().ok()?, &[2, 1, 3])?;
    }
    out.push(']');
    Some(())
}

/// The value of done entry `d`: a joined event's ts, or `(state, event_ts, entry or None)`
/// (`["d", state, event_ts]`, with the entry's offset, features, served_version and
/// prediction after them for an expired negative).
fn write_done(out: &mut String, d: &Bound<'_, PyAny>, own: &Bound<'_, PyAny>, joined: &str) -> Option<()> {
    out.push_str("[\"d\",");
    if let Ok(d) = d.downcast_exact::<PyTuple>() {
        write_value(out, &d.get_item(0).ok()?, 2)?;
        write_fields(out, d, &[1])?;
        let kept = d.get_item(2).ok()?;
        if !kept.is_none() {
            write_event(out, &kept, &[2], own)?;
        }
    } else {
        write_str(out, joined);
        out.push(',');
        write_value(out, d, 2)?;
    }
    out.push(']');
    Some(())
}

/// `id` of a Python str, or None.
fn id_str<'a>(i: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    i.downcast_exact::<PyString>().ok()?.to_str().ok()
}

fn finish(py: Python<'_>, out: &Bound<'_, PyList>, buf: &mut String) -> PyResult<()> {
    buf.push(']');
    out.append(PyBytes::new(py, buf.as_bytes()))
}

/// The `[key, value]` pairs of the change log `log` (see `PartitionJoiner.drain_changes`):
/// `None` when some value is not one this encoder takes (then the caller drains in Python).
#[pyfunction]
#[pyo3(signature = (log, log_seq, events, labels, done, own, joined))]
#[allow(clippy::too_many_arguments)]
pub fn encode_changes<'py>(py: Python<'py>, log: &Bound<'py, PyList>, log_seq: i64, events: &Bound<'py, PyDict>,
                           labels: &Bound<'py, PyDict>, done: &Bound<'py, PyDict>, own: &Bound<'py, PyAny>,
                           joined: &str) -> PyResult<Option<Bound<'py, PyList>>> {
    // id -> sequence number of its latest new pending entry, in first-change order
    let changed = PyDict::new(py);
    let mut seq = log_seq;
    for c in log.iter() {
        if let Ok(e) = c.downcast_exact::<PyTuple>() {
            changed.set_item(e.get_item(0)?, seq)?;
            seq += 1;
        } else if !changed.contains(&c)? {
            changed.set_item(&c, py.None())?;
        }
    }
    let out = PyList::empty(py);
    let mut buf = String::with_capacity(256);
    for (i, created) in changed.iter() {
        let Some(id) = id_str(&i) else { return Ok(None) };
        write_key(&mut buf, id);
        let created: Option<i64> = created.extract()?;
        let ok = if let Some(e) = events.get_item(&i)? {
            write_pending(&mut buf, true, created, &e, own)
        } else if let Some(e) = labels.get_item(&i)? {
            write_pending(&mut buf, false, created, &e, own)
        } else if let Some(d) = done.get_item(&i)? {
            write_done(&mut buf, &d, own, joined)
        } else {
            buf.push_str("null"); // the joiner no longer holds it
            Some(())
        };
        if ok.is_none() {
            return Ok(None);
        }
        finish(py, &out, &mut buf)?;
    }
    Ok(Some(out))
}

/// The `[key, value]` pairs of the whole state but the meta entry (see
/// `PartitionJoiner.snapshot`): every live pending entry of `entries` (the joiner's
/// pending entries in (deadline, arrival) order, stale ones too) once, then every done
/// entry. `None` when some value is not one this encoder takes.
#[pyfunction]
#[pyo3(signature = (entries, log, log_seq, events, labels, done, own, joined))]
#[allow(clippy::too_many_arguments)]
pub fn encode_snapshot<'py>(py: Python<'py>, entries: &Bound<'py, PyList>, log: &Bound<'py, PyList>, log_seq: i64,
                            events: &Bound<'py, PyDict>, labels: &Bound<'py, PyDict>, done: &Bound<'py, PyDict>, own: &Bound<'py, PyAny>,
                            joined: &str) -> PyResult<Option<Bound<'py, PyList>>> {
    // id -> sequence number, for the live entries not drained yet
    let fresh = PyDict::new(py);
    let mut seq = log_seq;
    let held = |e: &Bound<'py, PyTuple>| -> PyResult<Option<bool>> {
        let i = e.get_item(0)?;
        if events.get_item(&i)?.is_some_and(|x| x.is(e)) {
            return Ok(Some(true));
        }
        Ok(if labels.get_item(&i)?.is_some_and(|x| x.is(e)) { Some(false) } else { None })
    };
    for c in log.iter() {
        if let Ok(e) = c.downcast_exact::<PyTuple>() {
            if held(e)?.is_some() {
                fresh.set_item(e.get_item(0)?, seq)?;
            }
            seq += 1;
        }
    }
    let out = PyList::empty(py);
    let mut buf = String::with_capacity(256);
    let mut rank: i64 = 0;
    for e in entries.iter() {
        let Ok(e) = e.downcast_exact::<PyTuple>() else { return Ok(None) };
        let Some(event) = held(e)? else { continue }; // stale: joined or expired since
        let i = e.get_item(0)?;
        let Some(id) = id_str(&i) else { return Ok(None) };
        let s = match fresh.get_item(&i)? {
            Some(s) => s.extract::<i64>()?,
            None => {
                let r = rank; // the older entries: numbered in (deadline, arrival) order
                rank += 1;
                r
            }
        };
        write_key(&mut buf, id);
        if write_pending(&mut buf, event, Some(s), e, own).is_none() {
            return Ok(None);
        }
        finish(py, &out, &mut buf)?;
    }
    for (i, d) in done.iter() {
        let Some(id) = id_str(&i) else { return Ok(None) };
        write_key(&mut buf, id);
        if write_done(&mut buf, &d, own, joined).is_none() {
            return Ok(None);
        }
        finish(py, &out, &mut buf)?;
    }
    Ok(Some(out))
}
