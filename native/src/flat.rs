//! `EventEntry`: a pending-event entry whose features are all floats, held as one
//! object with the feature values in a flat `f64` array, in place of the entry tuple
//! `(id, ts, offset, served_version, prediction, *features)` that `PartitionJoiner`
//! packs (the reference).
//!
//! The decoder makes one for every event in the common form of an all-float schema
//! (`Decoder.items`); the joiner's state holds it, its rows carry it, and the Arrow
//! columns (columns.rs) and the change log (changes.rs) read its values straight from
//! the array. One object and one array an event instead of a tuple and a float object a
//! value: fewer allocations when it is made and freed, and the window of pending events
//! takes a fraction of the memory (so fewer cache misses when an entry is read seconds
//! after it was made).
//!
//! To Python it is a read-only sequence equal to that tuple (`len`, indexing and slices,
//! iteration, `==` and `hash` as the tuple's), so every Python reader of entries (the
//! dead letters, `Example.from_row`, the reference paths) takes it unchanged. It holds
//! only atomic values, so it is not tracked by the cyclic garbage collector.

use pyo3::basic::CompareOp;
use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PySlice, PyString, PyTuple};

use crate::key::Key;

/// An event's prediction, as the decoder takes it: none, a number, or a class name.
pub enum Prediction {
    None,
    F(f64),
    S(Box<str>),
}

/// Up to this many features are held in the entry itself; more in an array of their own.
const INLINE_FEATURES: usize = 12;

/// An entry's feature values: in the entry's own memory for a schema of up to
/// `INLINE_FEATURES` features (one allocation an event, and its values on the cache
/// lines of the object that the Arrow columns and the change log read anyway), else
/// boxed. To the readers a `[f64]`.
pub enum Features {
    Inline(u8, [f64; INLINE_FEATURES]),
    Heap(Box<[f64]>),
}

impl Features {
    /// The values `values` gives, or its first error.
    pub fn collect<E>(values: impl ExactSizeIterator<Item = Result<f64, E>>) -> Result<Features, E> {
        if values.len() > INLINE_FEATURES {
            return Ok(Features::Heap(values.collect::<Result<Box<[f64]>, E>>()?));
        }
        let mut inline = [0.0; INLINE_FEATURES];
        let mut len = 0;
        for (slot, v) in inline.iter_mut().zip(values) {
            *slot = v?;
            len += 1;
        }
        Ok(Features::Inline(len as u8, inline))
    }
}

impl std::ops::Deref for Features {
    type Target = [f64];

    fn deref(&self) -> &[f64] {
        match self {
            Features::Inline(n, values) => &values[..*n as usize],
            Features::Heap(values) => values,
        }
    }
}

/// A pending event's entry with float features (see the module doc). Every value is
/// held in Rust: making one and freeing it touches no other Python object.
#[pyclass(module = "ct_stream._native", frozen, sequence)]
pub struct EventEntry {
    /// In the entry's own memory up to 22 bytes (`Key`), and the join state's key as it is.
    pub id: Key,
    pub ts: f64,
    pub offset: i64,
    pub served_version: Option<i64>,
    pub prediction: Prediction,
    pub features: Features,
}

impl EventEntry {
    /// Field `k` of the tuple this entry stands for (`k < len`).
    fn item<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyAny>> {
        Ok(match k {
            0 => PyString::new(py, &self.id).into_any(),
            1 => PyFloat::new(py, self.ts).into_any(),
            2 => self.offset.into_pyobject(py)?.into_any(),
            3 => self.served_version.into_pyobject(py)?.into_any(),
            4 => match &self.prediction {
                Prediction::None => py.None().into_bound(py),
                Prediction::F(x) => PyFloat::new(py, *x).into_any(),
                Prediction::S(s) => PyString::new(py, s).into_any(),
            },
            _ => PyFloat::new(py, self.features[k - 5]).into_any(),
        })
    }

    /// The entry tuple this stands for (a new tuple each call).
    pub fn tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, (0..self.width()).map(|k| self.item(py, k)).collect::<PyResult<Vec<_>>>()?)
    }

    pub fn width(&self) -> usize {
        5 + self.features.len()
    }
}

#[pymethods]
impl EventEntry {
    fn __len__(&self) -> usize {
        self.width()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(slice) = key.downcast::<PySlice>() {
            return self.tuple(py)?.as_any().get_item(slice);
        }
        let n = self.width() as isize;
        let k: isize = key.extract()?;
        let at = if k < 0 { k + n } else { k };
        if !(0..n).contains(&at) {
            return Err(PyIndexError::new_err(format!("EventEntry index {k} out of range for {n} fields")));
        }
        self.item(py, at as usize)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.tuple(py)?.as_any().try_iter()?.into_any())
    }

    fn __richcmp__<'py>(&self, py: Python<'py>, other: &Bound<'py, PyAny>, op: CompareOp) -> PyResult<PyObject> {
        let other = match other.downcast::<EventEntry>() {
            Ok(e) => e.get().tuple(py)?.into_any(),
            Err(_) if other.is_instance_of::<PyTuple>() => other.clone(),
            Err(_) => return Ok(py.NotImplemented()),
        };
        Ok(self.tuple(py)?.as_any().rich_compare(other, op)?.unbind())
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.tuple(py)?.hash()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("EventEntry{}", self.tuple(py)?.repr()?))
    }
}
