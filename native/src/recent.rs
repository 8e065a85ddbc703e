//! `RecentKeys`: the trainer's memory of the example keys it learned last, for its dedupe
//! (`ct_stream.runtime.dedupe.RecentKeys` is the reference; tests/test_dedupe.py runs both
//! on the same streams). It reads an Arrow string column's buffers as they are, so no
//! Python string is made per id, and gives the keys back as the buffers of one Arrow
//! string array for the checkpoint.

use std::collections::VecDeque;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::key::Key;

/// Keyed at random per process, as the joiner's map (ids are user data).
type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;

/// The last `window` keys added (and the keys it was made with), oldest first.
#[pyclass(module = "ct_stream._native")]
pub struct RecentKeys {
    set: HashSet<Key>,
    order: VecDeque<Key>,
    window: usize,
}

/// The bytes of a C-contiguous buffer of one-byte items.
fn bytes<'a>(b: &'a PyBuffer<i8>, what: &str) -> PyResult<&'a [u8]> {
    if !b.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("RecentKeys.add_utf8: {what} must be a contiguous buffer")));
    }
    // SAFETY: a contiguous buffer of `len_bytes` bytes, kept alive (and its export held)
    // by `b` for the lifetime of the slice; i8 and u8 have the same layout.
    Ok(unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) })
}

impl RecentKeys {
    /// Add `key` unless it is held: whether it was new.
    fn add_one(&mut self, key: &str) -> bool {
        let k = Key::from(key);
        if self.set.contains(&k) {
            return false;
        }
        self.set.insert(k.clone());
        self.order.push_back(k);
        true
    }

    /// Forget the oldest keys beyond `window`; `keep` (one flag a key added) or None when
    /// every key was new.
    fn finish(&mut self, keep: Vec<bool>, dropped: usize) -> Option<Vec<bool>> {
        while self.order.len() > self.window {
            let k = self.order.pop_front().expect("a key");
            self.set.remove(&k);
        }
        if dropped == 0 {
            None
        } else {
            Some(keep)
        }
    }
}

#[pymethods]
impl RecentKeys {
    #[new]
    #[pyo3(signature = (window, keys=None))]
    fn new(window: usize, keys: Option<Vec<String>>) -> Self {
        let mut r = RecentKeys { set: HashSet::default(), order: VecDeque::new(), window };
        for k in keys.unwrap_or_default() {
            let k: Key = Key::from(k.as_str());
            r.set.insert(k.clone());
            r.order.push_back(k);
        }
        r
    }

    /// Add `keys` in order: a flag per key, False for one held already (or earlier in
    /// `keys`), or None when every key was new. Then forget beyond the window.
    fn add(&mut self, keys: Vec<String>) -> Option<Vec<bool>> {
        let mut keep = Vec::with_capacity(keys.len());
        let mut dropped = 0;
        for k in &keys {
            let new = self.add_one(k);
            dropped += usize::from(!new);
            keep.push(new);
        }
        self.finish(keep, dropped)
    }

    /// `add` for the values of an Arrow `string` array without nulls, given as its
    /// buffers: `offsets` (int32, little-endian) and `data`, its `offset` and `length`.
    /// A ValueError, and nothing added, for buffers that do not hold such an array
    /// (offsets out of range or decreasing, values that are not UTF-8).
    fn add_utf8(&mut self, offsets: PyBuffer<i8>, data: PyBuffer<i8>, offset: usize,
                length: usize) -> PyResult<Option<Vec<bool>>> {
        let offs = bytes(&offsets, "offsets")?;
        let data = bytes(&data, "data")?;
        let bad = |what: &str| PyValueError::new_err(format!("RecentKeys.add_utf8: {what}"));
        let end = offset.checked_add(length).and_then(|e| e.checked_add(1)).ok_or_else(|| bad("length"))?;
        if offs.len() < end * 4 {
            return Err(bad(&format!("{} bytes of offsets for {} values from {}", offs.len(), length, offset)));
        }
        let at = |i: usize| i32::from_le_bytes(offs[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        let (first, last) = (at(offset), at(offset + length));
        if first < 0 || last < first || last as usize > data.len() {
            return Err(bad(&format!("offsets {first}..{last} for {} bytes of data", data.len())));
        }
        let text = std::str::from_utf8(&data[first as usize..last as usize])
            .map_err(|_| bad("values that are not UTF-8"))?;
        let mut bounds = Vec::with_capacity(length + 1);
        let mut prev = first;
        for i in offset..=offset + length {
            let o = at(i);
            if o < prev || o > last || !text.is_char_boundary((o - first) as usize) {
                return Err(bad(&format!("offset {o} at {i}: decreasing, or inside a character")));
            }
            bounds.push((o - first) as usize);
            prev = o;
        }
        let mut keep = Vec::with_capacity(length);
        let mut dropped = 0;
        for w in bounds.windows(2) {
            let new = self.add_one(&text[w[0]..w[1]]);
            dropped += usize::from(!new);
            keep.push(new);
        }
        Ok(self.finish(keep, dropped))
    }

    /// The keys, oldest first, as the buffers of an Arrow `string` array: `(length,
    /// offsets, data)`; None when their text is more than an int32 offset reaches.
    fn arrow_buffers<'py>(&self, py: Python<'py>) -> Option<(usize, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let total: usize = self.order.iter().map(|k| k.len()).sum();
        if total > i32::MAX as usize {
            return None;
        }
        let mut offs = Vec::with_capacity(4 * (self.order.len() + 1));
        let mut data = Vec::with_capacity(total);
        offs.extend_from_slice(&0i32.to_le_bytes());
        for k in &self.order {
            data.extend_from_slice(k.as_bytes());
            offs.extend_from_slice(&(data.len() as i32).to_le_bytes());
        }
        Some((self.order.len(), PyBytes::new(py, &offs), PyBytes::new(py, &data)))
    }

    /// The keys, oldest first.
    fn keys(&self) -> Vec<String> {
        self.order.iter().map(|k| k.to_string()).collect()
    }

    fn __len__(&self) -> usize {
        self.order.len()
    }

    #[getter]
    fn window(&self) -> usize {
        self.window
    }
}
