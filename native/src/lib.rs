//! ct-stream's native data path (the Python module `ct_stream._native`).
//!
//! - [`Decoder`] (here): the batch decoder of event and label records. For every record
//!   in the common form it gives exactly what `ct_stream.records.decode_event` /
//!   `decode_label` give, and `None` for any other record (a reject, a missing or ISO ts,
//!   a conversion other than int to float, anything the strict scanner of json.rs leaves
//!   to Python), which the caller then decodes in Python.
//! - `encode_changes` and `encode_snapshot` (changes.rs): the joiner's change log and
//!   snapshot, encoded as JSON pairs straight from its state.
//! - `example_columns` (columns.rs): the examples' Arrow column buffers, read straight
//!   from the joiner's rows.
//! - `event_entry` (entry.rs): the joiner's pending-event entry, left out of the cyclic
//!   garbage collector when its values are atomic.
//! - `EventEntry` (flat.rs): the same entry for an all-float schema, its features in one
//!   `f64` array; to Python a sequence equal to the tuple.
//! - `JoinState` (joinstate.rs): a partition joiner's state and rules, the engine of
//!   `ct_stream.join.joiner.NativePartitionJoiner`.
//! - `Merger` (merge.rs): a partition's events and labels in timestamp order, filled by
//!   `Decoder.items_into`.
//! - `group_messages` (here): a poll's messages by topic partition, the errored apart.
//! - `RecentKeys` (recent.rs): the trainer's dedupe memory, fed Arrow string buffers.
//! - `lr_learn` (sgd.rs): the default model's `learn_batch`, River's steps row by row.
//!
//! Each has its Python reference, and property tests compare the two (tests/test_native.py,
//! tests/test_learn.py, tests/test_dedupe.py).

mod changes;
mod columns;
mod entry;
mod flat;
mod joinstate;
mod json;
mod key;
mod merge;
mod recent;
mod sgd;

use json::{Scanner, Val};
use key::Key;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};
use std::borrow::Cow;

/// Integers with a larger absolute value do not all convert to f64 exactly: left to Python.
const EXACT_INT: i64 = 1 << 53;

const FLOAT: u8 = 0;
const INT: u8 = 1;
const BOOL: u8 = 2;
const STR: u8 = 3;

#[derive(Clone, Copy, PartialEq)]
enum LabelType {
    Binary,
    Multiclass,
    Regression,
}

impl LabelType {
    const ALL: [(LabelType, &'static str); 3] =
        [(LabelType::Binary, "binary"), (LabelType::Multiclass, "multiclass"), (LabelType::Regression, "regression")];

    fn name(self) -> &'static str {
        LabelType::ALL.iter().find(|(t, _)| *t == self).map(|(_, n)| *n).expect("every label type has a name")
    }
}

/// The common-form values of one record, before any Python object is made.
enum Feat<'a> {
    F(f64),
    I(i64),
    B(bool),
    S(Cow<'a, str>),
}

enum Id<'a> {
    S(Cow<'a, str>),
    I(i64),
}

enum Pred<'a> {
    None,
    F(f64),
    S(Cow<'a, str>),
}

enum Lab<'a> {
    B(bool),
    F(f64),
    S(Cow<'a, str>),
}

struct EventRec<'a> {
    id: Id<'a>,
    ts: f64,
    feats: Vec<Feat<'a>>,
    served_version: Option<i64>,
    prediction: Pred<'a>,
}

struct LabelRec<'a> {
    id: Id<'a>,
    ts: f64,
    label: Lab<'a>,
}

/// Decodes batches of event or label records (JSON bytes) of one record schema.
#[pyclass(module = "ct_stream._native", frozen)]
struct Decoder {
    names: Vec<String>,
    /// Per name: spelled in JSON as its own bytes between quotes (no `"`, `\\` or control character).
    plain: Vec<bool>,
    codes: Vec<u8>,
    py_names: Vec<Py<PyString>>,
    label_type: LabelType,
    id_field: String,
    ts_field: String,
    max_record_bytes: usize,
    max_string_length: usize,
    max_abs_value: f64,
    int_limit: i64,
    event_cls: PyObject,
    label_cls: PyObject,
    flat: bool, // every feature a float: events' entries are `flat::EventEntry`s
}

fn too_long(s: &str, limit: usize) -> bool {
    s.len() > limit && s.chars().count() > limit
}

fn as_f64(v: &Val) -> Option<f64> {
    match v {
        Val::Float(f) => Some(*f),
        Val::Int(i) if i.unsigned_abs() <= EXACT_INT as u64 => Some(*i as f64),
        _ => None,
    }
}

impl Decoder {
    fn check_id<'a>(&self, v: Option<Val<'a>>) -> Option<Id<'a>> {
        match v? {
            Val::Str(s) if !s.is_empty() && !too_long(&s, self.max_string_length) => Some(Id::S(s)),
            Val::Int(i) => Some(Id::I(i)),
            _ => None,
        }
    }

    fn check_ts(&self, v: Option<Val>) -> Option<f64> {
        as_f64(&v?)
    }

    /// A number as Python decodes it where a float is expected: an int converted, within
    /// `max_abs_value`.
    fn number(&self, v: &Val) -> Option<f64> {
        as_f64(v).filter(|f| -self.max_abs_value <= *f && *f <= self.max_abs_value)
    }

    /// The top-level object: `field(key, scanner)` as for [`Scanner::members`], and
    /// nothing after it.
    fn object<'a>(&self, value: &'a [u8], field: impl FnMut(&str, &mut Scanner<'a>) -> Option<bool>) -> Option<()> {
        if value.len() > self.max_record_bytes {
            return None;
        }
        let mut sc = Scanner::new(value);
        sc.members(0, field)?;
        if sc.at_end() {
            Some(())
        } else {
            None
        }
    }

    /// The `features` object (not an object, or null: left to Python).
    fn features<'a>(&self, sc: &mut Scanner<'a>) -> Option<Vec<Feat<'a>>> {
        // the last value of a key counts (as orjson reads a key given twice)
        let mut slots: Vec<Option<Val<'a>>> = (0..self.names.len()).map(|_| None).collect();
        // records mostly list the features in the schema's order: look there first (and
        // take the key by its bytes when it is spelled as the name is)
        let next = std::cell::Cell::new(0);
        let expect = || self.names.get(next.get()).filter(|_| self.plain[next.get()]).map(String::as_str);
        sc.members_expecting(1, expect, |key, sc| {
            // an undeclared feature: the events must not keep it (left to Python)
            let k = if self.names.get(next.get()).is_some_and(|name| name == key) {
                next.get()
            } else {
                self.names.iter().position(|name| name == key)?
            };
            next.set(k + 1);
            slots[k] = Some(sc.value(1)?);
            Some(true)
        })?;
        // a declared feature missing, or of another type: None
        slots.into_iter().zip(&self.codes).map(|(v, code)| self.feature(v?, *code)).collect()
    }

    fn feature<'a>(&self, v: Val<'a>, code: u8) -> Option<Feat<'a>> {
        Some(match code {
            FLOAT => Feat::F(self.number(&v)?),
            INT => match v {
                Val::Int(i) if -self.int_limit <= i && i <= self.int_limit => Feat::I(i),
                _ => return None,
            },
            BOOL => match v {
                Val::Bool(b) => Feat::B(b),
                _ => return None,
            },
            _ => match v {
                Val::Str(s) if !too_long(&s, self.max_string_length) => Feat::S(s),
                _ => return None,
            },
        })
    }

    fn event<'a>(&self, value: &'a [u8]) -> Option<EventRec<'a>> {
        let (mut id, mut ts, mut feats, mut sv, mut pred) = (None, None, None, Val::Null, Val::Null);
        let mut n_feats = 0;
        self.object(value, |key, sc| {
            if key == self.id_field {
                id = Some(sc.value(0)?);
            } else if key == self.ts_field {
                ts = Some(sc.value(0)?);
            } else if key == "features" {
                n_feats += 1;
                feats = Some(self.features(sc)?);
            } else if key == "served_version" {
                sv = sc.value(0)?;
            } else if key == "prediction" {
                pred = sc.value(0)?;
            } else {
                return Some(false);
            }
            Some(true)
        })?;
        if n_feats != 1 {
            return None; // missing, or given twice (the last one counts): left to Python
        }
        let served_version = match sv {
            Val::Null => None,
            Val::Int(i) if 0 <= i && i <= self.int_limit => Some(i),
            _ => return None,
        };
        let prediction = match pred {
            Val::Null => Pred::None,
            Val::Str(s) if self.label_type == LabelType::Multiclass && !too_long(&s, self.max_string_length) => {
                Pred::S(s)
            }
            v @ (Val::Float(_) | Val::Int(_)) if self.label_type != LabelType::Multiclass => Pred::F(self.number(&v)?),
            _ => return None,
        };
        Some(EventRec { id: self.check_id(id)?, ts: self.check_ts(ts)?, feats: feats?, served_version, prediction })
    }

    fn label<'a>(&self, value: &'a [u8]) -> Option<LabelRec<'a>> {
        let (mut id, mut ts, mut label) = (None, None, None);
        self.object(value, |key, sc| {
            if key == self.id_field {
                id = Some(sc.value(0)?);
            } else if key == self.ts_field {
                ts = Some(sc.value(0)?);
            } else if key == "label" {
                label = Some(sc.value(0)?);
            } else {
                return Some(false);
            }
            Some(true)
        })?;
        let label = match (self.label_type, label?) {
            (LabelType::Binary, Val::Bool(b)) => Lab::B(b),
            (LabelType::Multiclass, Val::Str(s)) if !s.is_empty() && !too_long(&s, self.max_string_length) => {
                Lab::S(s)
            }
            (LabelType::Regression, v) => Lab::F(self.number(&v)?),
            _ => return None,
        };
        Some(LabelRec { id: self.check_id(id)?, ts: self.check_ts(ts)?, label })
    }

    fn event_object<'py>(&self, py: Python<'py>, r: &EventRec) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: `_PyDict_NewPresized` returns a new, empty dict (or NULL with an error
        // set): sized for the features, it is not resized while they go in.
        let feats: Bound<'py, PyDict> = unsafe {
            Bound::from_owned_ptr_or_err(py, pyo3::ffi::_PyDict_NewPresized(r.feats.len() as pyo3::ffi::Py_ssize_t))?
                .downcast_into_unchecked()
        };
        for (name, f) in self.py_names.iter().zip(&r.feats) {
            feats.set_item(name.bind(py), f.object(py)?)?;
        }
        self.event_cls.bind(py).call1((id_object(py, &r.id), PyFloat::new(py, r.ts), feats,
                                       served_version_object(py, r.served_version)?, r.prediction.object(py)))
    }

    /// The joiner's pending-event entry of `r` (`(id, ts, offset, served_version,
    /// prediction, *features in the decoder's name order)`, what `PartitionJoiner`
    /// packs), made without the `Event` and its features dict; its values are atomic, so
    /// it is left out of the cyclic garbage collector (as `entry::event_entry` does).
    fn event_tuple<'py>(&self, py: Python<'py>, r: &EventRec, offset: &Bound<'py, PyAny>)
                        -> PyResult<Bound<'py, PyTuple>> {
        let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(5 + r.feats.len());
        items.extend([id_object(py, &r.id), PyFloat::new(py, r.ts).into_any(), offset.clone(),
                      served_version_object(py, r.served_version)?, r.prediction.object(py)]);
        for f in &r.feats {
            items.push(f.object(py)?);
        }
        untracked(PyTuple::new(py, items)?)
    }

    /// The pending-event entry of `r` as a `flat::EventEntry` (every feature a float).
    fn event_flat<'py>(&self, py: Python<'py>, r: &EventRec, offset: i64) -> PyResult<Bound<'py, PyAny>> {
        let features = flat::Features::collect(r.feats.iter().map(|f| match f {
            Feat::F(x) => Ok(*x),
            _ => Err(pyo3::exceptions::PyValueError::new_err("a flat entry takes float features only")),
        }))?;
        let id = match &r.id {
            Id::S(s) => Key::from(&**s),
            Id::I(i) => Key::from(&*i.to_string()),
        };
        let prediction = match &r.prediction {
            Pred::None => flat::Prediction::None,
            Pred::F(x) => flat::Prediction::F(*x),
            Pred::S(s) => flat::Prediction::S((**s).into()),
        };
        Ok(Bound::new(py, flat::EventEntry { id, ts: r.ts, offset, served_version: r.served_version, prediction,
                                             features })?.into_any())
    }

    /// The joiner's pending-label entry of `r`: `(id, ts, offset, label)`.
    fn label_tuple<'py>(&self, py: Python<'py>, r: &LabelRec, offset: &Bound<'py, PyAny>)
                        -> PyResult<Bound<'py, PyTuple>> {
        untracked(PyTuple::new(py, [id_object(py, &r.id), PyFloat::new(py, r.ts).into_any(), offset.clone(),
                                    r.label.object(py)?])?)
    }

    /// A polled message's offset and, when its value is in the common form, its ts and
    /// the joiner's entry (see `items`).
    #[allow(clippy::type_complexity)]
    fn entry<'py>(&self, py: Python<'py>, m: &Bound<'py, PyAny>, event: bool)
                  -> PyResult<(Bound<'py, PyAny>, Option<(f64, Bound<'py, PyAny>)>)> {
        let value = m.call_method0(pyo3::intern!(py, "value"))?;
        let offset = m.call_method0(pyo3::intern!(py, "offset"))?;
        let rec = match value.downcast::<PyBytes>() {
            Ok(b) if event => match self.event(b.as_bytes()) {
                Some(r) if self.flat => Some((r.ts, self.event_flat(py, &r, offset.extract()?)?)),
                Some(r) => Some((r.ts, self.event_tuple(py, &r, &offset)?.into_any())),
                None => None,
            },
            Ok(b) => match self.label(b.as_bytes()) {
                Some(r) => Some((r.ts, self.label_tuple(py, &r, &offset)?.into_any())),
                None => None,
            },
            Err(_) => None,
        };
        Ok((offset, rec))
    }

    fn label_object<'py>(&self, py: Python<'py>, r: &LabelRec) -> PyResult<Bound<'py, PyAny>> {
        self.label_cls.bind(py).call1((id_object(py, &r.id), PyFloat::new(py, r.ts), r.label.object(py)?))
    }
}

impl Feat<'_> {
    fn object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Feat::F(x) => PyFloat::new(py, *x).into_any(),
            Feat::I(x) => x.into_pyobject(py)?.into_any(),
            Feat::B(x) => x.into_pyobject(py)?.to_owned().into_any(),
            Feat::S(x) => PyString::new(py, x).into_any(),
        })
    }
}

impl Pred<'_> {
    fn object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Pred::None => py.None().into_bound(py),
            Pred::F(x) => PyFloat::new(py, *x).into_any(),
            Pred::S(x) => PyString::new(py, x).into_any(),
        }
    }
}

impl Lab<'_> {
    fn object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Lab::B(x) => x.into_pyobject(py)?.to_owned().into_any(),
            Lab::F(x) => PyFloat::new(py, *x).into_any(),
            Lab::S(x) => PyString::new(py, x).into_any(),
        })
    }
}

fn served_version_object(py: Python<'_>, v: Option<i64>) -> PyResult<Bound<'_, PyAny>> {
    Ok(match v {
        Some(v) => v.into_pyobject(py)?.into_any(),
        None => py.None().into_bound(py),
    })
}

/// `t`, out of the cyclic garbage collector: only for a tuple of atomic values (str,
/// float, int, bool, None), which CPython's collector untracks at its first look anyway.
fn untracked(t: Bound<'_, PyTuple>) -> PyResult<Bound<'_, PyTuple>> {
    // SAFETY: `t` is a live tuple that holds no container, so no reference cycle can go through it.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(t.as_ptr().cast()) };
    Ok(t)
}

fn id_object<'py>(py: Python<'py>, id: &Id) -> Bound<'py, PyAny> {
    match id {
        Id::S(s) => PyString::new(py, s).into_any(),
        Id::I(i) => PyString::new(py, &i.to_string()).into_any(),
    }
}

#[pymethods]
impl Decoder {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (names, codes, label_type, id_field, ts_field, max_record_bytes, max_string_length,
                        max_abs_value, int_limit, event_cls, label_cls, flat=None))]
    fn new(py: Python<'_>, names: Vec<String>, codes: Vec<u8>, label_type: &str, id_field: String, ts_field: String,
           max_record_bytes: usize, max_string_length: usize, max_abs_value: f64, int_limit: i64,
           event_cls: PyObject, label_cls: PyObject, flat: Option<bool>) -> PyResult<Self> {
        use pyo3::exceptions::PyValueError;
        if names.len() != codes.len() || names.is_empty() || codes.iter().any(|c| *c > STR) {
            return Err(PyValueError::new_err(format!(
                "Decoder: got {} names and codes {:?}; allowed: as many codes (0..=3) as names, at least one",
                names.len(), codes)));
        }
        let Some((label_type, _)) = LabelType::ALL.into_iter().find(|(_, n)| *n == label_type) else {
            return Err(PyValueError::new_err(format!(
                "Decoder: label_type '{label_type}'; allowed: 'binary', 'multiclass' or 'regression'")));
        };
        let py_names = names.iter().map(|n| PyString::intern(py, n).unbind()).collect();
        // `flat`: events' entries as `flat::EventEntry` objects (None: when every feature
        // is a float; False: tuples, as loadtest/trainer_throughput.py compares)
        let all_float = codes.iter().all(|c| *c == FLOAT);
        if flat == Some(true) && !all_float {
            return Err(PyValueError::new_err(format!(
                "Decoder: flat=True with feature codes {codes:?}; allowed: every feature a float (code 0)")));
        }
        let flat = flat.unwrap_or(all_float);
        let plain = names.iter().map(|n| !n.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20)).collect();
        Ok(Decoder { names, plain, codes, py_names, label_type, id_field, ts_field, max_record_bytes, max_string_length,
                     max_abs_value, int_limit, event_cls, label_cls, flat })
    }

    /// Pickled as its constructor's arguments (a topology that holds one is pickled for
    /// the retrain process).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let py = slf.py();
        let d = slf.get();
        let args = (d.names.clone(), d.codes.clone(), d.label_type.name(), d.id_field.clone(), d.ts_field.clone(),
                    d.max_record_bytes, d.max_string_length, d.max_abs_value, d.int_limit, d.event_cls.clone_ref(py),
                    d.label_cls.clone_ref(py), d.flat).into_pyobject(py)?;
        Ok((slf.get_type().into_any(), args.into_any()))
    }

    /// The events of a batch of record values: a list as long as ``values`` holding an
    /// ``Event``, or None for a value not in the common form (to decode in Python), and
    /// how many are None.
    fn events<'py>(&self, py: Python<'py>, values: &Bound<'py, PyList>) -> PyResult<(Bound<'py, PyList>, usize)> {
        batch(py, values, |b| self.event(b).map(|r| self.event_object(py, &r)).transpose())
    }

    /// The `PartitionMerger` items of a batch of polled messages of one topic partition
    /// (`event`: the events topic), for `NativePartitionJoiner`: `(ts, (kind, entry,
    /// offset, message))` per message, the record being the joiner's entry itself (no
    /// `Event` or `Label`): a `flat::EventEntry` for an event when every feature of the
    /// schema is a float, else the entry tuple; None in place of an item for a message not
    /// in the common form, whose index is in the second list (to decode in Python).
    #[pyo3(signature = (kind, messages, event))]
    fn items<'py>(&self, py: Python<'py>, kind: &Bound<'py, PyAny>, messages: &Bound<'py, PyList>, event: bool)
                  -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
        let out = PyList::empty(py);
        let mut missing = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let (offset, rec) = self.entry(py, &m, event)?;
            match rec {
                Some((ts, rec)) => out.append((ts, (kind, rec, offset, &m)))?,
                None => {
                    missing.push(i);
                    out.append(py.None())?;
                }
            }
        }
        Ok((out, missing))
    }

    /// What `items` gives, queued straight into `merger` (a `merge::Merger`) for `kind`
    /// (no item tuple or ts float per record, and the payload tuple made only if Python
    /// takes it: `merge::Payload`): `(base, missing)`, where the record of a message not
    /// in the common form is a placeholder at queue index `base + i` for each `i` in
    /// `missing`, for the caller to decode and `put` before anything is taken. `kind` is
    /// "event" when `event` is true, else "label".
    #[pyo3(signature = (merger, kind, messages, event))]
    fn items_into<'py>(&self, py: Python<'py>, merger: &Bound<'py, merge::Merger>, kind: &str,
                       messages: &Bound<'py, PyList>, event: bool) -> PyResult<(usize, Vec<usize>)> {
        let k = if event { 0 } else { 1 };
        if kind != merge::NAMES[k] {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "items_into: kind {kind:?} with event={}; allowed: {:?}", if event { "True" } else { "False" }, merge::NAMES[k])));
        }
        let mut m = merger.borrow_mut();
        let queue = m.queue(k);
        let base = queue.len();
        let mut missing = Vec::new();
        for (i, msg) in messages.iter().enumerate() {
            let (offset, rec) = self.entry(py, &msg, event)?;
            queue.push_back(match rec {
                Some((ts, rec)) => merge::Item {
                    ts: Some(ts),
                    payload: merge::Payload::Parts { record: rec.unbind(), offset: offset.unbind(), message: msg.unbind() },
                },
                None => {
                    missing.push(i);
                    merge::Item { ts: None, payload: merge::Payload::Object(py.None()) }
                }
            });
        }
        Ok((base, missing))
    }

    /// The labels of a batch of record values, like :meth:`events`.
    fn labels<'py>(&self, py: Python<'py>, values: &Bound<'py, PyList>) -> PyResult<(Bound<'py, PyList>, usize)> {
        batch(py, values, |b| self.label(b).map(|r| self.label_object(py, &r)).transpose())
    }
}

/// `decode(value)` of each bytes value (a record object, or None for a value not in the
/// common form; None for an item that is not bytes too), and how many are None.
fn batch<'py>(py: Python<'py>, values: &Bound<'py, PyList>,
              decode: impl Fn(&[u8]) -> PyResult<Option<Bound<'py, PyAny>>>) -> PyResult<(Bound<'py, PyList>, usize)> {
    let out = PyList::empty(py);
    let mut missing = 0;
    for v in values.iter() {
        let rec = match v.downcast::<PyBytes>() {
            Ok(b) => decode(b.as_bytes())?,
            Err(_) => None,
        };
        match rec {
            Some(rec) => out.append(rec)?,
            None => {
                missing += 1;
                out.append(py.None())?;
            }
        }
    }
    Ok((out, missing))
}

/// Polled messages (`confluent_kafka.Message`s, or anything with their `error()`,
/// `topic()` and `partition()` methods) by topic partition: `({(topic, partition):
/// [messages in poll order]}, [messages whose error() is not None, in poll order])`.
/// What `ct_stream.kafka.group._group_messages` does (the reference), without a Python
/// loop and key tuple per message: a run of messages of one topic partition (a fetch
/// response) is one dict lookup.
#[pyfunction]
fn group_messages<'py>(py: Python<'py>, messages: &Bound<'py, PyList>)
                       -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
    let groups = PyDict::new(py);
    let errored = PyList::empty(py);
    let mut last: Option<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyList>)> = None;
    for m in messages.iter() {
        if !m.call_method0(pyo3::intern!(py, "error"))?.is_none() {
            errored.append(&m)?;
            continue;
        }
        let topic = m.call_method0(pyo3::intern!(py, "topic"))?;
        let partition = m.call_method0(pyo3::intern!(py, "partition"))?;
        let same = match &last {
            Some((t, p, _)) => (t.is(&topic) || t.eq(&topic)?) && (p.is(&partition) || p.eq(&partition)?),
            None => false,
        };
        if !same {
            let key = PyTuple::new(py, [&topic, &partition])?;
            let list = match groups.get_item(&key)? {
                Some(l) => l.downcast_into::<PyList>()?,
                None => {
                    let l = PyList::empty(py);
                    groups.set_item(&key, &l)?;
                    l
                }
            };
            last = Some((topic, partition, list));
        }
        last.as_ref().expect("set above").2.append(&m)?;
    }
    Ok((groups, errored))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add_class::<joinstate::JoinState>()?;
    m.add_class::<flat::EventEntry>()?;
    m.add_class::<merge::Merger>()?;
    m.add_class::<recent::RecentKeys>()?;
    m.add_function(wrap_pyfunction!(changes::encode_changes, m)?)?;
    m.add_function(wrap_pyfunction!(changes::encode_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(sgd::lr_learn, m)?)?;
    m.add_function(wrap_pyfunction!(columns::example_columns, m)?)?;
    m.add_function(wrap_pyfunction!(entry::event_entry, m)?)?;
    m.add_function(wrap_pyfunction!(group_messages, m)?)?;
    Ok(())
}

/// The module's own allocations (ids, entries' arrays, column and change-log buffers)
/// come from mimalloc: glibc's malloc and free took about 8% of the full loop's main thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
