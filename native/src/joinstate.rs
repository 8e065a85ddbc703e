//! The partition joiner's state in Rust: `JoinState`, the engine of
//! `ct_stream.join.joiner.NativePartitionJoiner`.
//!
//! The rules are those of `PartitionJoiner` (`ct_stream/join/joiner.py`, the reference;
//! the tests run both on the same inputs and compare outputs, changes, snapshots,
//! counters and state). What differs is where the state lives: one Rust map from id to
//! its slot (a pending event, a pending label, or a done entry) in place of three Python
//! dicts, a deadline queue sorted by (deadline, arrival) in place of the bucket wheel,
//! the done memory's time buckets in a B-tree, and the change log as a list of ids. The
//! payloads stay the Python objects the reference uses: a pending record is its entry
//! tuple (`(id, ts, offset, served_version, prediction, *feature values)` for an
//! event, `(id, ts, offset, label)` for a label), or for an event of an all-float schema
//! the `flat::EventEntry` that stands for that tuple, so the example rows, the
//! change-log encoders and the Arrow columns are the same as the reference's.
//!
//! Dead letters are returned as small tuples for the Python side to turn into
//! `DeadLetter` objects: `(0, input, watermark, max_ts)` for a late input,
//! `(1, label entry, capacity)` for a label whose event never came,
//! `(2, event entry, capacity)` for an event expired under the `dlq` policy.

use std::collections::{BTreeMap, VecDeque};
use crate::key::Key;

/// The id map's hasher: aHash with keys drawn at random per process, as SipHash's are in
/// std's `RandomState` (ids are user data: nobody can aim ids at one bucket without the
/// keys); SipHash-1-3 was 4.3% of the full loop's main thread in `perf`.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyList, PyString, PyTuple};

use crate::flat::EventEntry;
use crate::merge::{input_tuple, Merger, Payload};

use crate::changes::{write_event, write_key, write_pending, write_str};
use crate::entry::event_entry;

const JOINED: u8 = 0;
const EXPIRED: u8 = 1;
const CORRECTED: u8 = 2;
const DROPPED: u8 = 3;
const DEAD_LETTERED: u8 = 4;
/// The done states' names, by code (`ct_stream/join/joiner.py`'s `_JOINED` ...).
const STATE_NAMES: [&str; 5] = ["joined", "expired", "corrected", "dropped", "dlq"];

// Indexes of the counters, in the order of `ct_stream.join.joiner.COUNTER_KEYS`.
const C_EVENTS: usize = 0;
const C_LABELS: usize = 1;
const C_JOINED: usize = 2;
const C_EXPIRED: usize = 3;
const C_DROPPED: usize = 4;
const C_DLQ: usize = 5;
const C_CORRECTIONS: usize = 6;
const C_DUP_EVENTS: usize = 7;
const C_DUP_LABELS: usize = 8;
const C_LATE: usize = 9;
const C_UNKNOWN: usize = 10;
const C_CAPACITY: usize = 11;
const C_FORGOTTEN: usize = 12;
const N_COUNTERS: usize = 13;

const NEGATIVE: u8 = 0;
const DROP: u8 = 1;
const DLQ: u8 = 2;

enum Slot {
    // an event's entry is a tuple or a `flat::EventEntry`; a label's is a tuple
    Event { seq: u64, ts: f64, entry: Py<PyAny> },
    Label { seq: u64, ts: f64, entry: Py<PyAny> },
    Done { state: u8, ts: f64, kept: Option<Py<PyAny>> },
}

/// A pending entry's place in the deadline queue; stale once its id's slot is no longer
/// the pending entry with this `seq` (joined since).
struct Due {
    deadline: f64,
    seq: u64,
    id: Key,
}

/// Python's float floor division (`float.__floordiv__`), so the done memory's time
/// buckets are the reference's to the last bit.
fn py_floordiv(vx: f64, wx: f64) -> f64 {
    let mut m = vx % wx; // fmod
    let mut div = (vx - m) / wx;
    if m != 0.0 && ((wx < 0.0) != (m < 0.0)) {
        m += wx;
        div -= 1.0;
    }
    let _ = m;
    if div != 0.0 {
        let mut fl = div.floor();
        if div - fl > 0.5 {
            fl += 1.0;
        }
        fl
    } else {
        0.0_f64.copysign(vx / wx)
    }
}

fn write_f64(out: &mut String, x: f64) -> Option<()> {
    if !x.is_finite() {
        return None; // left to the Python encoder (the reference's answer)
    }
    out.push_str(ryu::Buffer::new().format_finite(x));
    Some(())
}

fn live(map: &HashMap<Key, Slot>, d: &Due) -> bool {
    matches!(map.get(&d.id), Some(Slot::Event { seq, .. } | Slot::Label { seq, .. }) if *seq == d.seq)
}

/// Encoded `[key, value]` pairs packed into chunks (a JSON array of pairs each) of at
/// most `limit` bytes, a lone pair bigger than that in a chunk of its own: the chunks
/// `pack_pairs` makes of the same pairs (ct_stream/join/changelog.py). Without a limit,
/// each pair is its own bytes object, not packed.
struct Packer<'py> {
    py: Python<'py>,
    out: Bound<'py, PyList>,
    chunk: Vec<u8>,
    pairs: usize,
    limit: Option<usize>,
}

impl<'py> Packer<'py> {
    fn new(py: Python<'py>, limit: Option<usize>) -> Self {
        let capacity = limit.unwrap_or(0).min(1 << 20);
        Packer { py, out: PyList::empty(py), chunk: Vec::with_capacity(capacity), pairs: 0, limit }
    }

    fn push(&mut self, pair: &[u8]) -> PyResult<()> {
        self.pairs += 1;
        let Some(limit) = self.limit else {
            return self.out.append(pyo3::types::PyBytes::new(self.py, pair));
        };
        // the chunk's size with this pair: "[" and each pair with its comma or the "]"
        if !self.chunk.is_empty() && self.chunk.len() + 1 + pair.len() + 1 > limit {
            self.flush()?;
        }
        self.chunk.push(if self.chunk.is_empty() { b'[' } else { b',' });
        self.chunk.extend_from_slice(pair);
        Ok(())
    }

    fn flush(&mut self) -> PyResult<()> {
        if !self.chunk.is_empty() {
            self.chunk.push(b']');
            self.out.append(pyo3::types::PyBytes::new(self.py, &self.chunk))?;
            self.chunk.clear();
        }
        Ok(())
    }

    /// `(chunks or pairs, number of pairs)`.
    fn finish(mut self) -> PyResult<(Bound<'py, PyList>, usize)> {
        self.flush()?;
        Ok((self.out, self.pairs))
    }
}

/// A change-log pair before encoding: the key's id, its slot (None: no longer held), and
/// a pending entry's sequence number.
type Row<'a> = (&'a str, Option<&'a Slot>, Option<u64>);

/// An input's record: a decoded `Event` / `Label`, or the joiner's entry packed by the
/// decoder (`Decoder.items`: a tuple, or a `flat::EventEntry` for an event), with whether
/// it is in the joiner's own name order.
#[derive(Clone, Copy)]
enum Rec<'a, 'py> {
    Obj(&'a Bound<'py, PyAny>),
    Entry(&'a Bound<'py, PyAny>, bool),
}

impl<'py> Rec<'_, 'py> {
    fn label(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Rec::Obj(r) => r.getattr(intern!(py, "label")),
            Rec::Entry(e, _) => e.get_item(3),
        }
    }
}

/// One partition's join state (see the module docs and `PartitionJoiner`).
#[pyclass(module = "ct_stream._native")]
pub struct JoinState {
    partition: Py<PyAny>,
    delay: f64,
    grace: f64,
    horizon: f64,
    width: f64,
    policy: u8,
    default_label: Py<PyAny>,
    own: Py<PyAny>,
    error: Py<PyAny>,
    names: Option<Py<PyTuple>>,
    /// The feature names of the entry records of the current `process` call.
    entry_names: Option<Py<PyTuple>>,
    max_ts: f64,
    idle_wm: f64,
    wm: f64,
    seq: u64,
    log_seq: u64,
    map: HashMap<Key, Slot>,
    n_events: usize,
    n_labels: usize,
    n_done: usize,
    queue: VecDeque<Due>,
    stale: usize,
    buckets: BTreeMap<i64, Vec<Key>>,
    log: Vec<Key>,
    delays: Vec<f64>,
    counts: [u64; N_COUNTERS],
}

impl JoinState {
    fn bucket_key(&self, event_ts: f64) -> i64 {
        py_floordiv(event_ts + self.horizon, self.width) as i64
    }

    fn bucket(&mut self, id: Key, k: i64) {
        self.buckets.entry(k).or_default().push(id);
    }

    /// Put `id` in the done memory (its slot is free) and in its time bucket.
    fn remember(&mut self, id: Key, state: u8, ts: f64, kept: Option<Py<PyAny>>) {
        let k = self.bucket_key(ts);
        self.map.insert(id.clone(), Slot::Done { state, ts, kept });
        self.n_done += 1;
        self.bucket(id, k);
    }

    fn schedule(&mut self, d: Due) {
        match self.queue.back() {
            Some(b) if b.deadline > d.deadline => {
                let pos = self.queue.partition_point(|x| x.deadline <= d.deadline);
                self.queue.insert(pos, d);
            }
            _ => self.queue.push_back(d),
        }
    }

    /// A new pending entry for `id` (whose slot is free): the latest arrival.
    fn add_pending(&mut self, id: Key, event: bool, ts: f64, entry: Py<PyAny>) {
        let seq = self.seq;
        self.seq += 1;
        if event {
            self.map.insert(id.clone(), Slot::Event { seq, ts, entry });
            self.n_events += 1;
        } else {
            self.map.insert(id.clone(), Slot::Label { seq, ts, entry });
            self.n_labels += 1;
        }
        self.log.push(id.clone());
        self.schedule(Due { deadline: ts + self.delay, seq, id });
    }

    /// The key for `id`: the one the map holds for it (which is then removed with its
    /// slot, counted out), or a new one.
    fn take_key(&mut self, id: &Key) -> (Key, Option<Slot>) {
        match self.map.remove_entry(id) {
            Some((k, slot)) => {
                match slot {
                    Slot::Event { .. } => self.n_events -= 1,
                    Slot::Label { .. } => self.n_labels -= 1,
                    Slot::Done { .. } => self.n_done -= 1,
                }
                (k, Some(slot))
            }
            None => (id.clone(), None),
        }
    }

    fn learn_from(&mut self, py: Python<'_>, features: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.names.is_some() {
            return Ok(());
        }
        let names = PyTuple::new(py, features.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
        if names.iter().all(|n| n.is_exact_instance_of::<PyString>()) {
            self.names = Some(names.unbind());
        }
        Ok(())
    }

    /// The entry of a pending event: packed in the joiner's feature-name order, or with
    /// its own features dict (`PartitionJoiner._event_entry`).
    #[allow(clippy::too_many_arguments)]
    fn make_entry<'py>(&mut self, py: Python<'py>, id: &Bound<'py, PyAny>, ts: &Bound<'py, PyAny>,
                       offset: &Bound<'py, PyAny>, features: &Bound<'py, PyAny>, sv: &Bound<'py, PyAny>,
                       pred: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        if self.names.is_none() {
            self.learn_from(py, features)?;
        }
        if let Some(names) = &self.names {
            let names = names.bind(py);
            if features.len()? == names.len() {
                match event_entry(py, names, id, ts, offset, sv, pred, features) {
                    Ok(e) => return Ok(e),
                    Err(e) if e.is_instance_of::<PyKeyError>(py) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.own_entry(py, id, ts, offset, sv, pred, features)
    }

    /// An event entry that keeps its own features dict: `(id, ts, offset, served_version,
    /// prediction, <own-names marker>, features)`.
    #[allow(clippy::too_many_arguments)]
    fn own_entry<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>, ts: &Bound<'py, PyAny>,
                      offset: &Bound<'py, PyAny>, sv: &Bound<'py, PyAny>, pred: &Bound<'py, PyAny>,
                      features: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, [id, ts, offset, sv, pred, self.own.bind(py), features])
    }

    /// Whether the entry records of this `process` call are in the joiner's own name
    /// order (found once a call, in `direct`; the joiner takes their names when it has none).
    fn entry_direct(&mut self, py: Python<'_>, direct: &mut Option<bool>) -> PyResult<bool> {
        if let Some(d) = *direct {
            return Ok(d);
        }
        let Some(en) = &self.entry_names else {
            return Err(PyValueError::new_err("an entry record needs the entry_names it was packed in"));
        };
        if self.names.is_none() {
            self.names = Some(en.clone_ref(py));
        }
        let own = self.names.as_ref().expect("names").bind(py);
        let d = own.is(en.bind(py)) || own.eq(en.bind(py))?;
        *direct = Some(d);
        Ok(d)
    }

    fn names_or_none(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.names {
            Some(n) => n.clone_ref(py).into_any(),
            None => py.None(),
        }
    }

    fn row<'py>(&self, py: Python<'py>, entry: &Bound<'py, PyAny>, names: Py<PyAny>, label_ts: &Bound<'py, PyAny>,
                label: &Bound<'py, PyAny>, outcome: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, [entry, names.bind(py), label_ts, label, outcome.as_any(), self.partition.bind(py)])
    }

    #[allow(clippy::too_many_arguments)]
    fn on_event<'py>(&mut self, py: Python<'py>, id: &Key, id_obj: Option<&Bound<'py, PyAny>>, ts: f64,
                     ts_obj: Option<&Bound<'py, PyAny>>, offset: &Bound<'py, PyAny>, rec: Rec<'_, 'py>,
                     forget_wm: f64, rows: &Bound<'py, PyList>) -> PyResult<()> {
        let horizon = self.horizon;
        let pending_label = match self.map.get(id) {
            Some(Slot::Event { .. }) => {
                self.counts[C_DUP_EVENTS] += 1;
                return Ok(());
            }
            Some(Slot::Done { ts: d, .. }) if *d + horizon >= forget_wm => {
                self.counts[C_DUP_EVENTS] += 1;
                return Ok(());
            }
            Some(Slot::Label { .. }) => true,
            _ => false,
        };
        let (key, slot) = self.take_key(id);
        if let Rec::Entry(e, true) = rec {
            // an entry packed by the decoder in the joiner's own feature-name order
            if pending_label {
                let Some(Slot::Label { entry: pl, ts: lts, .. }) = slot else { unreachable!("a pending label") };
                let pl = pl.bind(py);
                let row = self.row(py, e.as_any(), self.names_or_none(py), &pl.get_item(1)?, &pl.get_item(3)?,
                                   intern!(py, "joined"))?;
                rows.append(row)?;
                self.joined_early(key, ts, lts);
            } else {
                self.add_pending(key, true, ts, e.clone().unbind());
            }
            return Ok(());
        }
        // a flat entry is always direct (process): the record here is a tuple or an Event
        let (Some(id_obj), Some(ts_obj)) = (id_obj, ts_obj) else {
            unreachable!("an event's record other than a flat entry has its id and ts objects")
        };
        let (features, sv, pred) = match rec {
            Rec::Obj(rec) => (rec.getattr(intern!(py, "features"))?, rec.getattr(intern!(py, "served_version"))?,
                              rec.getattr(intern!(py, "prediction"))?),
            Rec::Entry(e, _) => (self.entry_features(py, e)?, e.get_item(3)?, e.get_item(4)?),
        };
        if pending_label {
            let Some(Slot::Label { entry: pl, ts: lts, .. }) = slot else { unreachable!("a pending label") };
            let pl = pl.bind(py);
            let entry = self.own_entry(py, id_obj, ts_obj, offset, &sv, &pred, &features)?;
            let label_ts = pl.get_item(1)?;
            let row = self.row(py, entry.as_any(), py.None(), &label_ts, &pl.get_item(3)?,
                               intern!(py, "joined"))?;
            rows.append(row)?;
            self.joined_early(key, ts, lts);
        } else {
            let entry = self.make_entry(py, id_obj, ts_obj, offset, &features, &sv, &pred)?;
            self.add_pending(key, true, ts, entry.into_any().unbind());
        }
        Ok(())
    }

    /// One input of `process`, a `(kind, record, offset, source)` tuple: its offset.
    fn tuple_input<'py>(&mut self, py: Python<'py>, item: &Bound<'py, PyAny>, direct: &mut Option<bool>,
                        rows: &Bound<'py, PyList>, dead: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyAny>> {
        let t = item.downcast::<PyTuple>()?;
        let kind = t.get_borrowed_item(0)?;
        let (s_event, s_label) = (intern!(py, "event"), intern!(py, "label"));
        let is_event = if kind.is(s_event) {
            true
        } else if kind.is(s_label) {
            false
        } else if kind.eq(s_event)? {
            true
        } else if kind.eq(s_label)? {
            false
        } else {
            return Err(PyErr::from_value(self.error.bind(py).call1((format!(
                "Input.kind must be 'event' or 'label', got {}", kind.repr()?), ))?));
        };
        let offset = t.get_item(2)?;
        self.input(py, is_event, t.get_item(1)?, &offset, || Ok(item.clone()), direct, rows, dead)?;
        Ok(offset)
    }

    /// One input: its kind, record and offset; `whole` gives the input itself, for the
    /// dead letter of a late record.
    #[allow(clippy::too_many_arguments)]
    fn input<'py>(&mut self, py: Python<'py>, is_event: bool, mut rec: Bound<'py, PyAny>, offset: &Bound<'py, PyAny>,
                  whole: impl FnOnce() -> PyResult<Bound<'py, PyAny>>, direct: &mut Option<bool>,
                  rows: &Bound<'py, PyList>, dead: &Bound<'py, PyList>) -> PyResult<()> {
        self.counts[if is_event { C_EVENTS } else { C_LABELS }] += 1;
        if let Ok(f) = rec.downcast_exact::<EventEntry>() {
            if !is_event {
                return Err(PyValueError::new_err("a label record cannot be an EventEntry"));
            }
            if !self.entry_direct(py, direct)? {
                // the joiner's names are in another order: the tuple path reorders
                let entry = f.get().tuple(py)?.into_any();
                rec = entry;
            }
        }
        let flat = rec.downcast_exact::<EventEntry>().ok().map(|f| f.get());
        let (id_obj, ts_obj, ts, r) = if let Some(f) = flat {
            (None, None, f.ts, Rec::Entry(&rec, true))
        } else if rec.is_exact_instance_of::<PyTuple>() {
            let ts_obj = rec.get_item(1)?;
            let ts: f64 = ts_obj.extract()?;
            (Some(rec.get_item(0)?), Some(ts_obj), ts, Rec::Entry(&rec, self.entry_direct(py, direct)?))
        } else {
            let ts_obj = rec.getattr(intern!(py, "ts"))?;
            let ts: f64 = ts_obj.extract()?;
            (Some(rec.getattr(intern!(py, "id"))?), Some(ts_obj), ts, Rec::Obj(&rec))
        };
        if ts < self.wm {
            self.counts[C_LATE] += 1;
            dead.append((0u8, whole()?, self.wm, self.max_ts))?;
            return Ok(());
        }
        let id = match (flat, &id_obj) {
            (Some(f), _) => f.id.clone(),
            (None, Some(i)) => Key::from(i.downcast::<PyString>()?.to_str()?),
            (None, None) => unreachable!("an id object for every record but a flat entry"),
        };
        let forget_wm = self.wm;
        if is_event {
            self.on_event(py, &id, id_obj.as_ref(), ts, ts_obj.as_ref(), offset, r, forget_wm, rows)?;
        } else {
            let (Some(id_obj), Some(ts_obj)) = (&id_obj, &ts_obj) else {
                unreachable!("a label's record is a tuple or a Label")
            };
            self.on_label(py, &id, id_obj, ts, ts_obj, offset, r, forget_wm, rows)?;
        }
        if ts > self.max_ts {
            self.max_ts = ts;
            if ts - self.grace > self.wm {
                self.wm = ts - self.grace;
                self.expire(py, rows, dead)?;
            }
        }
        Ok(())
    }

    /// The event `key` (at `ts`) joined the label pending for it (at `label_ts`).
    fn joined_early(&mut self, key: Key, ts: f64, label_ts: f64) {
        self.delays.push(label_ts - ts);
        self.counts[C_JOINED] += 1;
        self.stale += 1; // the label's place in the queue
        self.remember(key.clone(), JOINED, ts, None);
        self.log.push(key);
    }

    /// The features dict of an entry record packed in the decoder's name order.
    fn entry_features<'py>(&self, py: Python<'py>, e: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let names = self.entry_names.as_ref().ok_or_else(|| PyValueError::new_err(
            "an entry record (a tuple) needs the entry_names it was packed in"))?;
        let d = PyDict::new(py);
        for (k, n) in names.bind(py).iter().enumerate() {
            d.set_item(n, e.get_item(5 + k)?)?;
        }
        Ok(d.into_any())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_label<'py>(&mut self, py: Python<'py>, id: &Key, id_obj: &Bound<'py, PyAny>, ts: f64,
                     ts_obj: &Bound<'py, PyAny>, offset: &Bound<'py, PyAny>, rec: Rec<'_, 'py>,
                     forget_wm: f64, rows: &Bound<'py, PyList>) -> PyResult<()> {
        let horizon = self.horizon;
        enum Case {
            Join,
            Correct,
            Duplicate,
            Wait,
        }
        let case = match self.map.get(id) {
            Some(Slot::Event { .. }) => Case::Join,
            Some(Slot::Done { ts: d, state, .. }) if *d + horizon >= forget_wm => {
                if *state == EXPIRED { Case::Correct } else { Case::Duplicate }
            }
            Some(Slot::Label { .. }) => Case::Duplicate,
            _ => Case::Wait,
        };
        match case {
            Case::Duplicate => self.counts[C_DUP_LABELS] += 1,
            Case::Join => {
                let label = rec.label(py)?;
                let (key, slot) = self.take_key(id);
                let Some(Slot::Event { ts: ev_ts, entry, .. }) = slot else { unreachable!("a pending event") };
                let row = self.row(py, entry.bind(py).as_any(), self.names_or_none(py), ts_obj, &label,
                                   intern!(py, "joined"))?;
                rows.append(row)?;
                self.delays.push(ts - ev_ts);
                self.counts[C_JOINED] += 1;
                self.stale += 1; // the event's place in the queue
                self.remember(key.clone(), JOINED, ev_ts, None);
                self.log.push(key);
            }
            Case::Correct => {
                let label = rec.label(py)?;
                let names = self.names_or_none(py);
                let Some((key, slot)) = self.map.get_key_value(id) else { unreachable!("a done entry") };
                let key = key.clone();
                let Slot::Done { ts: d, kept, .. } = slot else { unreachable!("a done entry") };
                let d = *d;
                let Some(kept) = kept else {
                    return Err(PyValueError::new_err(format!("expired negative {:?} holds no event entry", &**id)));
                };
                let row = self.row(py, kept.bind(py).as_any(), names, ts_obj, &label, intern!(py, "correction"))?;
                rows.append(row)?;
                self.counts[C_CORRECTIONS] += 1;
                // in place: the id keeps its time bucket
                self.map.insert(key.clone(), Slot::Done { state: CORRECTED, ts: d, kept: None });
                self.log.push(key);
            }
            Case::Wait => {
                let (key, _) = self.take_key(id); // a done entry past the horizon: forgotten
                let entry = match rec {
                    Rec::Entry(e, _) => e.clone(), // already (id, ts, offset, label)
                    Rec::Obj(_) => PyTuple::new(py, [id_obj, ts_obj, offset, &rec.label(py)?])?.into_any(),
                };
                self.add_pending(key, false, ts, entry.unbind());
            }
        }
        Ok(())
    }

    /// The map's key and slot of `d`'s id, removed and counted out, when `d` is still its
    /// pending entry (one probe of the map); None when it is stale.
    fn take_live(&mut self, d: Due) -> Option<(Key, Slot)> {
        let std::collections::hash_map::Entry::Occupied(e) = self.map.entry(d.id) else { return None };
        match e.get() {
            Slot::Event { seq, .. } if *seq == d.seq => self.n_events -= 1,
            Slot::Label { seq, .. } if *seq == d.seq => self.n_labels -= 1,
            _ => return None,
        }
        Some(e.remove_entry())
    }

    /// Expire a pending entry taken with `take_live`.
    fn expire_entry<'py>(&mut self, py: Python<'py>, key: Key, slot: Slot, capacity: bool,
                         rows: &Bound<'py, PyList>, dead: &Bound<'py, PyList>) -> PyResult<()> {
        self.log.push(key.clone());
        match slot {
            Slot::Label { entry, .. } => {
                self.counts[C_UNKNOWN] += 1;
                dead.append((1u8, entry, capacity))?;
            }
            Slot::Event { ts, entry, .. } => {
                let (state, kept) = match self.policy {
                    NEGATIVE => {
                        self.counts[C_EXPIRED] += 1;
                        let row = self.row(py, entry.bind(py).as_any(), self.names_or_none(py), &py.None().into_bound(py),
                                           self.default_label.bind(py), intern!(py, "expired"))?;
                        rows.append(row)?;
                        (EXPIRED, Some(entry))
                    }
                    DROP => {
                        self.counts[C_DROPPED] += 1;
                        (DROPPED, None)
                    }
                    _ => {
                        self.counts[C_DLQ] += 1;
                        dead.append((2u8, entry, capacity))?;
                        (DEAD_LETTERED, None)
                    }
                };
                self.remember(key, state, ts, kept);
            }
            Slot::Done { .. } => unreachable!("take_live gives a pending entry"),
        }
        Ok(())
    }

    /// Step 4: expire what is due at the watermark, then forget past the horizon.
    fn expire<'py>(&mut self, py: Python<'py>, rows: &Bound<'py, PyList>, dead: &Bound<'py, PyList>) -> PyResult<()> {
        while let Some(front) = self.queue.front() {
            if !(front.deadline < self.wm) {
                break;
            }
            let d = self.queue.pop_front().expect("a front");
            match self.take_live(d) {
                Some((key, slot)) => self.expire_entry(py, key, slot, false, rows, dead)?,
                None => self.stale -= 1,
            }
        }
        if let Some((&k, _)) = self.buckets.first_key_value() {
            if (k as f64) < self.wm / self.width - 1.0 {
                self.forget_past_horizon();
            }
        }
        Ok(())
    }

    /// Forget the done entries of the buckets past the horizon (unlogged: it follows from the watermark).
    fn forget_past_horizon(&mut self) {
        let wm = self.wm;
        let clean_below = wm / self.width - 1.0;
        while let Some(entry) = self.buckets.first_entry() {
            if !((*entry.key() as f64) < clean_below) {
                break;
            }
            let (k, ids) = entry.remove_entry();
            for id in ids {
                let std::collections::hash_map::Entry::Occupied(e) = self.map.entry(id) else { continue };
                let Slot::Done { ts: d, .. } = e.get() else { continue };
                let d = *d;
                if d + self.horizon < wm {
                    e.remove();
                    self.n_done -= 1;
                    continue;
                }
                let id = e.key().clone();
                if self.bucket_key(d) <= k {
                    self.bucket(id, k + 1); // float rounding at a bucket edge: look again with the next
                }
            }
        }
    }

    fn peek_live(&mut self) -> Option<f64> {
        while let Some(d) = self.queue.front() {
            if live(&self.map, d) {
                return Some(d.deadline);
            }
            self.queue.pop_front();
            self.stale -= 1;
        }
        None
    }

    /// Drop the queue's stale places once they outnumber the pending entries (and 1024).
    fn maybe_compact(&mut self) {
        if self.stale > 1024 && self.stale > self.n_events + self.n_labels {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let map = &self.map;
        self.queue.retain(|d| live(map, d));
        self.stale = 0;
    }

    /// The ids changed since the last drain, each once, in first-change order.
    fn changed(&self) -> Vec<Key> {
        let mut seen: HashSet<&Key> = HashSet::with_capacity_and_hasher(self.log.len(), Default::default());
        self.log.iter().filter(|i| seen.insert(i)).cloned().collect()
    }

    /// Append the change-log value of `slot` (with `seq` for a pending entry).
    fn write_slot(&self, py: Python<'_>, out: &mut String, slot: Option<&Slot>, seq: Option<u64>) -> Option<()> {
        let own = self.own.bind(py);
        match slot {
            None => out.push_str("null"),
            Some(Slot::Event { entry, .. }) => write_pending(out, true, seq.map(|s| s as i64), entry.bind(py), own)?,
            Some(Slot::Label { entry, .. }) => write_pending(out, false, seq.map(|s| s as i64), entry.bind(py), own)?,
            Some(Slot::Done { state, ts, kept }) => {
                out.push_str("[\"d\",");
                write_str(out, STATE_NAMES[*state as usize]);
                out.push(',');
                write_f64(out, *ts)?;
                if let Some(kept) = kept {
                    write_event(out, kept.bind(py), &[2], own)?;
                }
                out.push(']');
            }
        }
        Some(())
    }

    /// The change-log value of `slot` as Python data for `NativePartitionJoiner`'s
    /// reference path: `("e" | "l", seq, entry)`, `("d", state, ts, kept entry or None)` or None.
    fn raw_slot<'py>(&self, py: Python<'py>, slot: Option<&Slot>, seq: Option<u64>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match slot {
            None => py.None().into_bound(py),
            Some(Slot::Event { entry, .. }) => ("e", seq, entry.clone_ref(py)).into_pyobject(py)?.into_any(),
            Some(Slot::Label { entry, .. }) => ("l", seq, entry.clone_ref(py)).into_pyobject(py)?.into_any(),
            Some(Slot::Done { state, ts, kept }) => {
                ("d", STATE_NAMES[*state as usize], *ts, kept.as_ref().map(|k| k.clone_ref(py)))
                    .into_pyobject(py)?.into_any()
            }
        })
    }

    fn slot_seq(slot: Option<&Slot>) -> Option<u64> {
        match slot {
            Some(Slot::Event { seq, .. } | Slot::Label { seq, .. }) => Some(*seq),
            _ => None,
        }
    }

    /// The live pending entries in (deadline, arrival) order, each with the sequence
    /// number a snapshot gives it: its own when created since the last drain, else its
    /// rank among the older ones.
    fn snapshot_pending(&self) -> Vec<(&Key, u64)> {
        let mut rank = 0;
        let mut out = Vec::with_capacity(self.n_events + self.n_labels);
        for d in &self.queue {
            if !live(&self.map, d) {
                continue;
            }
            let s = if d.seq >= self.log_seq {
                d.seq
            } else {
                rank += 1;
                rank - 1
            };
            out.push((&d.id, s));
        }
        out
    }

    fn change_rows<'a>(&'a self, changed: &'a [Key]) -> Vec<Row<'a>> {
        changed.iter().map(|id| {
            let slot = self.map.get(id);
            (&**id, slot, Self::slot_seq(slot))
        }).collect()
    }

    fn snapshot_rows(&self) -> Vec<Row<'_>> {
        let pending = self.snapshot_pending().into_iter().map(|(id, s)| (&**id, self.map.get(id), Some(s)));
        let done = self.map.iter().filter(|(_, s)| matches!(s, Slot::Done { .. }));
        pending.chain(done.map(|(id, slot)| (&**id, Some(slot), None))).collect()
    }

    /// `rows` as JSON pairs, then `extra` (see `drain_encoded`).
    fn encode_rows<'py>(&self, py: Python<'py>, rows: Vec<Row<'_>>, max_bytes: Option<usize>, extra: Option<&[u8]>)
                        -> PyResult<Option<(Bound<'py, PyList>, usize)>> {
        let mut packer = Packer::new(py, max_bytes);
        let mut buf = String::with_capacity(256);
        for (id, slot, seq) in rows {
            write_key(&mut buf, id);
            if self.write_slot(py, &mut buf, slot, seq).is_none() {
                return Ok(None);
            }
            buf.push(']');
            packer.push(buf.as_bytes())?;
        }
        if let Some(extra) = extra {
            packer.push(extra)?;
        }
        packer.finish().map(Some)
    }

    fn raw_rows<'py>(&self, py: Python<'py>, rows: Vec<Row<'_>>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (id, slot, seq) in rows {
            out.append((id, self.raw_slot(py, slot, seq)?))?;
        }
        Ok(out)
    }

    fn end_drain(&mut self) {
        self.log.clear();
        self.log_seq = self.seq;
    }
}

#[pymethods]
impl JoinState {
    /// `policy`: "negative" | "drop" | "dlq"; `own`: the own-names marker of event
    /// entries; `error`: the exception class for an input of an unknown kind.
    #[new]
    #[pyo3(signature = (partition, max_label_delay, grace, policy, default_label, own, error))]
    #[allow(clippy::too_many_arguments)]
    fn new(partition: Bound<'_, PyAny>, max_label_delay: f64, grace: f64, policy: &str, default_label: Bound<'_, PyAny>,
           own: Bound<'_, PyAny>, error: Bound<'_, PyAny>) -> PyResult<Self> {
        let policy = match policy {
            "negative" => NEGATIVE,
            "drop" => DROP,
            "dlq" => DLQ,
            other => return Err(PyValueError::new_err(format!("policy {other:?}: one of negative, drop, dlq"))),
        };
        if !(max_label_delay > 0.0) {
            return Err(PyValueError::new_err(format!("max_label_delay {max_label_delay}: must be > 0")));
        }
        Ok(JoinState {
            partition: partition.unbind(),
            delay: max_label_delay,
            grace,
            horizon: 2.0 * max_label_delay + grace,
            width: max_label_delay / 8.0,
            policy,
            default_label: default_label.unbind(),
            own: own.unbind(),
            error: error.unbind(),
            names: None,
            entry_names: None,
            max_ts: f64::NEG_INFINITY,
            idle_wm: f64::NEG_INFINITY,
            wm: f64::NEG_INFINITY,
            seq: 0,
            log_seq: 0,
            map: HashMap::default(),
            n_events: 0,
            n_labels: 0,
            n_done: 0,
            queue: VecDeque::new(),
            stale: 0,
            buckets: BTreeMap::new(),
            log: Vec::new(),
            delays: Vec::new(),
            counts: [0; N_COUNTERS],
        })
    }

    /// Join `inputs` (`(kind, record, offset, source)` each, in arrival order): `(rows, dead)`.
    /// A record is an `Event` / `Label`, or the joiner's entry tuple as `Decoder.items`
    /// packs it (`(id, ts, offset, served_version, prediction, *features)` for an event,
    /// `(id, ts, offset, label)` for a label), the features in the order of `entry_names`.
    #[pyo3(signature = (inputs, entry_names=None))]
    fn process<'py>(&mut self, py: Python<'py>, inputs: &Bound<'py, PyAny>, entry_names: Option<Bound<'py, PyTuple>>)
                    -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let rows = PyList::empty(py);
        let dead = PyList::empty(py);
        self.entry_names = entry_names.map(Bound::unbind);
        let mut direct: Option<bool> = None; // entry records are in the joiner's own name order
        for item in inputs.try_iter()? {
            self.tuple_input(py, &item?, &mut direct, &rows, &dead)?;
        }
        self.entry_names = None;
        self.maybe_compact();
        Ok((rows, dead))
    }

    /// `process` of what `merger` releases now (what its `take_payloads` would give), the
    /// parts `Decoder.items_into` queued read as they are: no payload tuple and no list of
    /// them per call. `(rows, dead, n, offsets)`: `n` inputs taken, `offsets` the last
    /// event's and the last label's offsets among them (None for a kind not taken).
    #[pyo3(signature = (merger, entry_names=None))]
    #[allow(clippy::type_complexity)]
    fn process_merged<'py>(&mut self, py: Python<'py>, merger: &Bound<'py, Merger>,
                           entry_names: Option<Bound<'py, PyTuple>>)
                           -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, usize, [Option<Bound<'py, PyAny>>; 2])> {
        let items = merger.borrow_mut().take_items(py)?;
        let (rows, dead) = (PyList::empty(py), PyList::empty(py));
        let n = items.len();
        let mut last: [Option<Bound<'py, PyAny>>; 2] = [None, None];
        self.entry_names = entry_names.map(Bound::unbind);
        let mut direct: Option<bool> = None;
        for (kind, payload) in items {
            match payload {
                Payload::Parts { record, offset, message } => {
                    let (record, offset) = (record.into_bound(py), offset.into_bound(py));
                    let whole = || Ok(input_tuple(py, kind, &record, &offset, message.into_bound(py))?.into_any());
                    self.input(py, kind == 0, record.clone(), &offset, whole, &mut direct, &rows, &dead)?;
                    last[kind] = Some(offset);
                }
                Payload::Object(item) => {
                    last[kind] = Some(self.tuple_input(py, item.bind(py), &mut direct, &rows, &dead)?);
                }
            }
        }
        self.entry_names = None;
        self.maybe_compact();
        Ok((rows, dead, n, last))
    }

    /// Move the watermark to `wm` by idle time (the caller checked it is higher) and expire.
    fn advance_idle<'py>(&mut self, py: Python<'py>, wm: f64) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let rows = PyList::empty(py);
        let dead = PyList::empty(py);
        self.wm = wm;
        self.idle_wm = wm;
        self.expire(py, &rows, &dead)?;
        Ok((rows, dead))
    }

    /// The smallest deadline among pending entries, or None.
    fn oldest_deadline(&mut self) -> Option<f64> {
        self.peek_live()
    }

    /// Expire up to `n` pending entries early, smallest deadline first (capacity).
    fn expire_oldest<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let rows = PyList::empty(py);
        let dead = PyList::empty(py);
        for _ in 0..n {
            if self.peek_live().is_none() {
                break;
            }
            let d = self.queue.pop_front().expect("a live front");
            let (key, slot) = self.take_live(d).expect("peek_live left a live front");
            self.expire_entry(py, key, slot, true, &rows, &dead)?;
            self.counts[C_CAPACITY] += 1;
        }
        Ok((rows, dead))
    }

    fn oldest_memory(&self) -> Option<i64> {
        self.buckets.keys().next().copied()
    }

    /// Forget the oldest time bucket of the done memory now; how many ids.
    fn forget_oldest(&mut self) -> usize {
        let Some((k, ids)) = self.buckets.pop_first() else { return 0 };
        let mut n = 0;
        for id in ids {
            let Some(Slot::Done { ts: d, .. }) = self.map.get(&id) else { continue };
            if self.bucket_key(*d) <= k {
                let (key, _) = self.take_key(&id);
                self.log.push(key);
                n += 1;
            }
        }
        self.counts[C_FORGOTTEN] += n as u64;
        n
    }

    /// The change log as JSON `[key, value]` pairs (the meta entry aside), then `extra`
    /// (the meta pair, when given), and the next log started: `(pairs, n)`, or, with
    /// `max_bytes`, the pairs packed into chunks of at most that (see `Packer`). None,
    /// with the log left as it is, when a value is not one the native encoder takes.
    #[pyo3(signature = (max_bytes=None, extra=None))]
    fn drain_encoded<'py>(&mut self, py: Python<'py>, max_bytes: Option<usize>, extra: Option<&[u8]>)
                          -> PyResult<Option<(Bound<'py, PyList>, usize)>> {
        let changed = self.changed();
        let got = self.encode_rows(py, self.change_rows(&changed), max_bytes, extra)?;
        if got.is_some() {
            self.end_drain();
        }
        Ok(got)
    }

    /// `drain_encoded`'s pairs as `(id, raw value)` (see `raw_slot`), and the next log started.
    fn drain_raw<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let changed = self.changed();
        let out = self.raw_rows(py, self.change_rows(&changed))?;
        self.end_drain();
        Ok(out)
    }

    /// The whole state as JSON pairs (the meta entry aside): the pending entries in
    /// (deadline, arrival) order, then the done entries, then `extra`; packed and None as
    /// for `drain_encoded`. The change log is not touched.
    #[pyo3(signature = (max_bytes=None, extra=None))]
    fn snapshot_encoded<'py>(&self, py: Python<'py>, max_bytes: Option<usize>, extra: Option<&[u8]>)
                             -> PyResult<Option<(Bound<'py, PyList>, usize)>> {
        self.encode_rows(py, self.snapshot_rows(), max_bytes, extra)
    }

    /// `snapshot_encoded`'s pairs as `(id, raw value)`.
    fn snapshot_raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.raw_rows(py, self.snapshot_rows())
    }

    // Restore (PartitionJoiner.restore's steps) ----------------------------------------

    /// The entry of a pending event (learning the feature names from the first one).
    #[pyo3(signature = (i, ts, offset, features, served_version, prediction))]
    fn event_entry<'py>(&mut self, py: Python<'py>, i: &Bound<'py, PyAny>, ts: &Bound<'py, PyAny>,
                        offset: &Bound<'py, PyAny>, features: &Bound<'py, PyAny>, served_version: &Bound<'py, PyAny>,
                        prediction: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        self.make_entry(py, i, ts, offset, features, served_version, prediction)
    }

    /// Take `features`' names as the joiner's (when it has none and they are all str).
    fn learn_names(&mut self, py: Python<'_>, features: &Bound<'_, PyAny>) -> PyResult<()> {
        self.learn_from(py, features)
    }

    /// Add the restored pending `entry` (the latest arrival so far).
    fn restore_pending(&mut self, event: bool, entry: &Bound<'_, PyTuple>) -> PyResult<()> {
        let id: String = entry.get_item(0)?.extract()?;
        let ts: f64 = entry.get_item(1)?.extract()?;
        let (key, _) = self.take_key(&Key::from(id.as_str()));
        self.add_pending(key, event, ts, entry.clone().into_any().unbind());
        Ok(())
    }

    /// Remember the restored done entry of `id`.
    #[pyo3(signature = (i, state, ts, kept=None))]
    fn restore_done(&mut self, i: &str, state: &str, ts: f64, kept: Option<Bound<'_, PyTuple>>) -> PyResult<()> {
        let Some(code) = STATE_NAMES.iter().position(|s| *s == state) else {
            return Err(PyValueError::new_err(format!("done state {state:?}: one of {STATE_NAMES:?}")));
        };
        let (key, _) = self.take_key(&Key::from(i));
        self.remember(key, code as u8, ts, kept.map(|k| k.into_any().unbind()));
        Ok(())
    }

    /// Finish a restore: the watermark state and the sequence counter, then forget past
    /// the horizon as the original did at this watermark (unlogged).
    fn restore_meta(&mut self, max_ts: f64, idle_wm: f64, seq: u64) {
        self.max_ts = max_ts;
        self.idle_wm = idle_wm;
        self.seq = self.seq.max(seq);
        self.end_drain();
        self.wm = (max_ts - self.grace).max(idle_wm);
        self.forget_past_horizon();
    }

    // Views ------------------------------------------------------------------------------

    #[getter]
    fn watermark(&self) -> f64 {
        self.wm
    }

    #[getter]
    fn max_ts(&self) -> f64 {
        self.max_ts
    }

    #[getter]
    fn idle_watermark(&self) -> f64 {
        self.idle_wm
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    #[getter]
    fn names(&self, py: Python<'_>) -> Py<PyAny> {
        self.names_or_none(py)
    }

    #[getter]
    fn pending_events(&self) -> usize {
        self.n_events
    }

    #[getter]
    fn pending_labels(&self) -> usize {
        self.n_labels
    }

    #[getter]
    fn remembered(&self) -> usize {
        self.n_done
    }

    /// The counters, in the order of `COUNTER_KEYS`.
    fn counts(&self) -> Vec<u64> {
        self.counts.to_vec()
    }

    /// `label.ts - event.ts` of every joined example since the last call.
    fn drain_label_delays<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::new(py, self.delays.iter().map(|&d| PyFloat::new(py, d)))?;
        self.delays.clear();
        Ok(out)
    }
}
