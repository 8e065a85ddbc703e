//! The joiner's pending-event entry, packed from a decoded event: what the generated
//! `pack` of `ct_stream/join/joiner.py`'s `_event_codec` returns (the reference), made
//! without the interpreter, and left out of the cyclic garbage collector when it holds
//! no container (CPython untracks such a tuple at its first collection anyway: here it
//! is never tracked, so the collector never walks the window of pending events).

use pyo3::exceptions::PyKeyError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// Whether CPython's collector would untrack a tuple holding `x` (`_PyTuple_MaybeUntrack`):
/// `x` is not a collected object, or an untracked tuple.
unsafe fn atomic(x: *mut ffi::PyObject) -> bool {
    ffi::PyObject_IS_GC(x) == 0 || (ffi::PyTuple_CheckExact(x) != 0 && ffi::PyObject_GC_IsTracked(x) == 0)
}

/// `(i, ts, offset, served_version, prediction, features[names[0]], ...)`; `KeyError`
/// (the first missing name) when `features` lacks one of `names`, as `features[name]`
/// raises. A `features` that is not exactly a dict is read with its own `__getitem__`.
#[pyfunction]
#[pyo3(signature = (names, i, ts, offset, served_version, prediction, features))]
#[allow(clippy::too_many_arguments)] // the packer's own arguments, after the names
pub fn event_entry<'py>(py: Python<'py>, names: &Bound<'py, PyTuple>, i: &Bound<'py, PyAny>, ts: &Bound<'py, PyAny>,
                        offset: &Bound<'py, PyAny>, served_version: &Bound<'py, PyAny>,
                        prediction: &Bound<'py, PyAny>, features: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let n = names.len();
    let dict = features.downcast_exact::<PyDict>().is_ok();
    // SAFETY: a new tuple of 5 + n slots, each set exactly once below (a new reference
    // each) before the tuple is returned; on an error the partly filled tuple is dropped,
    // which CPython allows (unset slots are NULL and skipped by the deallocator).
    unsafe {
        let raw = ffi::PyTuple_New((5 + n) as ffi::Py_ssize_t);
        if raw.is_null() {
            return Err(PyErr::fetch(py));
        }
        let entry: Bound<'py, PyTuple> = Bound::from_owned_ptr(py, raw).downcast_into_unchecked();
        let mut untrack = true;
        for (k, x) in [i, ts, offset, served_version, prediction].into_iter().enumerate() {
            let p = x.as_ptr();
            untrack &= atomic(p);
            ffi::Py_INCREF(p);
            ffi::PyTuple_SET_ITEM(raw, k as ffi::Py_ssize_t, p);
        }
        for k in 0..n {
            let name = ffi::PyTuple_GET_ITEM(names.as_ptr(), k as ffi::Py_ssize_t);
            let p = if dict {
                let v = ffi::PyDict_GetItemWithError(features.as_ptr(), name); // borrowed
                if v.is_null() {
                    if let Some(e) = PyErr::take(py) {
                        return Err(e);
                    }
                    return Err(PyKeyError::new_err(Bound::from_borrowed_ptr(py, name).unbind()));
                }
                ffi::Py_INCREF(v);
                v
            } else {
                let v = ffi::PyObject_GetItem(features.as_ptr(), name); // new reference
                if v.is_null() {
                    return Err(PyErr::fetch(py));
                }
                v
            };
            untrack &= atomic(p);
            ffi::PyTuple_SET_ITEM(raw, (5 + k) as ffi::Py_ssize_t, p);
        }
        if untrack {
            ffi::PyObject_GC_UnTrack(raw.cast());
        }
        Ok(entry)
    }
}
