//! `Merger`: one partition's events and labels released in timestamp order, the rules of
//! `ct_stream.join.merge.PartitionMerger` (the reference; tests/test_merge.py runs both
//! on the same random histories). The queues hold each record's timestamp as an `f64`
//! and its payload, and `Decoder.items_into` fills them straight from the polled
//! messages: no `(ts, payload)` tuple and no float object per record, and the merge loop
//! runs here instead of in the interpreter.

use std::collections::VecDeque;

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

const EVENT: usize = 0;
const LABEL: usize = 1;
pub const NAMES: [&str; 2] = ["event", "label"];

/// A queued record: its timestamp (None: a record that failed to decode) and payload.
pub struct Item {
    pub ts: Option<f64>,
    pub payload: Payload,
}

/// What the merger gives for a record: a Python object as it was queued (`add`, `put`),
/// or the parts of the joiner input `(kind, record, offset, message)` that
/// `Decoder.items_into` queued, made into that tuple only when Python takes it
/// (`take`, `take_payloads`); `JoinState.process_merged` reads the parts as they are.
pub enum Payload {
    Object(PyObject),
    Parts { record: PyObject, offset: PyObject, message: PyObject },
}

impl Payload {
    /// The payload as Python takes it.
    pub fn object(self, py: Python<'_>, kind: usize) -> PyResult<PyObject> {
        Ok(match self {
            Payload::Object(o) => o,
            Payload::Parts { record, offset, message } => {
                input_tuple(py, kind, record.bind(py), offset.bind(py), message.into_bound(py))?.into_any().unbind()
            }
        })
    }
}

/// The joiner input `(kind, record, offset, message)` of a record of `kind` (an index of `NAMES`).
pub fn input_tuple<'py>(py: Python<'py>, kind: usize, record: &Bound<'py, PyAny>, offset: &Bound<'py, PyAny>,
                        message: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let name = if kind == EVENT { pyo3::intern!(py, "event") } else { pyo3::intern!(py, "label") };
    PyTuple::new(py, [name.as_any(), record, offset, &message])
}

/// Releases one partition's events and labels in timestamp order (see
/// `PartitionMerger`, whose arguments and methods it has).
#[pyclass(module = "ct_stream._native")]
pub struct Merger {
    queues: [VecDeque<Item>; 2],
    at_end: [bool; 2],
    last_ts: [f64; 2],
    grace: f64,
    max_wait: f64,
    clock: PyObject,
    held_since: Option<f64>,
}

fn kind_index(kind: &str) -> PyResult<usize> {
    NAMES.iter().position(|n| *n == kind).ok_or_else(|| PyKeyError::new_err(kind.to_string()))
}

impl Merger {
    /// The queue of `kind`, for the decoder: it pushes the items and reopens the topic.
    pub fn queue(&mut self, kind: usize) -> &mut VecDeque<Item> {
        self.at_end[kind] = false;
        &mut self.queues[kind]
    }

    fn emit(py: Python<'_>, out: &Bound<'_, PyList>, bare: bool, kind: usize, payload: Payload) -> PyResult<()> {
        let payload = payload.object(py, kind)?;
        if bare {
            out.append(payload)
        } else {
            out.append(PyTuple::new(py, [NAMES[kind].into_pyobject(py)?.into_any(), payload.into_bound(py)])?)
        }
    }

    /// What `take_payloads` gives, as (kind, payload) pairs for Rust.
    pub fn take_items(&mut self, py: Python<'_>) -> PyResult<Vec<(usize, Payload)>> {
        let mut out = Vec::new();
        self.take_into(py, |kind, payload| {
            out.push((kind, payload));
            Ok(())
        })?;
        Ok(out)
    }

    fn pop(&mut self, kind: usize) -> Item {
        self.queues[kind].pop_front().expect("a queued record")
    }

    fn take_impl<'py>(&mut self, py: Python<'py>, bare: bool) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        self.take_into(py, |kind, payload| Self::emit(py, &out, bare, kind, payload))?;
        Ok(out)
    }

    /// `PartitionMerger._take`, step for step: each record released goes to `emit`.
    fn take_into(&mut self, py: Python<'_>, mut emit: impl FnMut(usize, Payload) -> PyResult<()>) -> PyResult<()> {
        if !self.queues[EVENT].is_empty() && !self.queues[LABEL].is_empty() {
            // the common case: both queues hold records
            let mut last: [Option<f64>; 2] = [None, None];
            loop {
                let et = self.queues[EVENT][0].ts;
                let lt = self.queues[LABEL][0].ts;
                let kind = match (et, lt) {
                    (Some(_), None) => LABEL,
                    (Some(e), Some(l)) if e > l => LABEL,
                    _ => EVENT,
                };
                let it = self.pop(kind);
                if it.ts.is_some() {
                    last[kind] = it.ts;
                }
                emit(kind, it.payload)?;
                if self.queues[kind].is_empty() {
                    break;
                }
            }
            for kind in [EVENT, LABEL] {
                if let Some(t) = last[kind] {
                    self.last_ts[kind] = t;
                }
            }
        }
        loop {
            let head = |q: &VecDeque<Item>| q.front().map(|i| i.ts);
            let (eh, lh) = (head(&self.queues[EVENT]), head(&self.queues[LABEL]));
            if eh == Some(None) {
                let it = self.pop(EVENT);
                emit(EVENT, it.payload)?;
                continue;
            }
            if lh == Some(None) {
                let it = self.pop(LABEL);
                emit(LABEL, it.payload)?;
                continue;
            }
            if let (Some(Some(e)), Some(Some(l))) = (eh, lh) {
                let kind = if e <= l { EVENT } else { LABEL };
                self.last_ts[kind] = if kind == EVENT { e } else { l };
                let it = self.pop(kind);
                emit(kind, it.payload)?;
                continue;
            }
            let kind = if eh.is_some() && self.at_end[LABEL] {
                EVENT
            } else if lh.is_some() && self.at_end[EVENT] {
                LABEL
            } else {
                self.held_since = None;
                return Ok(());
            };
            let other = 1 - kind;
            let ts = self.queues[kind][0].ts.expect("a head with a ts (None heads went above)");
            if ts <= self.last_ts[other] + self.grace {
                self.last_ts[kind] = ts;
                let it = self.pop(kind);
                emit(kind, it.payload)?;
                continue;
            }
            let now: f64 = self.clock.bind(py).call0()?.extract()?;
            let since = *self.held_since.get_or_insert(now);
            if now - since < self.max_wait {
                return Ok(());
            }
            self.held_since = None;
            while let Some(it) = self.queues[kind].pop_front() {
                if let Some(t) = it.ts {
                    self.last_ts[kind] = t;
                }
                emit(kind, it.payload)?;
            }
        }
    }
}

#[pymethods]
impl Merger {
    #[new]
    #[pyo3(signature = (grace=0.0, max_wait=0.0, clock=None))]
    fn new(py: Python<'_>, grace: f64, max_wait: f64, clock: Option<PyObject>) -> PyResult<Self> {
        let clock = match clock {
            Some(c) => c,
            None => py.import("time")?.getattr("monotonic")?.unbind(),
        };
        Ok(Merger { queues: [VecDeque::new(), VecDeque::new()], at_end: [false; 2],
                    last_ts: [f64::NEG_INFINITY; 2], grace, max_wait, clock, held_since: None })
    }

    /// Queue records of `kind` (`(ts, payload)` pairs, in offset order); the topic is no
    /// longer at its end.
    fn add(&mut self, kind: &str, items: &Bound<'_, PyAny>) -> PyResult<()> {
        let k = kind_index(kind)?;
        let mut got = Vec::new();
        for item in items.try_iter()? {
            let (ts, payload): (Option<f64>, PyObject) = item?.extract()?;
            got.push(Item { ts, payload: Payload::Object(payload) });
        }
        self.queue(k).extend(got);
        Ok(())
    }

    /// The consumer reached the end of this partition of `kind`'s topic.
    fn mark_end(&mut self, kind: &str) -> PyResult<()> {
        self.at_end[kind_index(kind)?] = true;
        Ok(())
    }

    /// The topic whose records the other topic's buffered records wait for, if any.
    fn waiting_for(&self) -> Option<&'static str> {
        let (e, l) = (!self.queues[EVENT].is_empty(), !self.queues[LABEL].is_empty());
        if e && !l && !self.at_end[LABEL] {
            Some(NAMES[LABEL])
        } else if l && !e && !self.at_end[EVENT] {
            Some(NAMES[EVENT])
        } else {
            None
        }
    }

    /// Records of `kind` waiting.
    fn buffered(&self, kind: &str) -> PyResult<usize> {
        Ok(self.queues[kind_index(kind)?].len())
    }

    /// Every record that can go to the joiner now, in timestamp order, as `(kind, payload)` pairs.
    fn take<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.take_impl(py, false)
    }

    /// What `take` returns, the payloads alone.
    fn take_payloads<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.take_impl(py, true)
    }

    /// Set the queued record `index` of `kind` (counted from the queue's front), which
    /// `Decoder.items_into` left for Python to decode.
    #[pyo3(signature = (kind, index, ts, payload))]
    fn put(&mut self, kind: &str, index: usize, ts: Option<f64>, payload: PyObject) -> PyResult<()> {
        let k = kind_index(kind)?;
        let slot = self.queues[k].get_mut(index).ok_or_else(|| PyKeyError::new_err(index))?;
        *slot = Item { ts, payload: Payload::Object(payload) };
        Ok(())
    }
}
