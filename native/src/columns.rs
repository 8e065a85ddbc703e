//! The joiner's example rows, transposed into Arrow column buffers: what
//! `ct_stream/join/arrow.py`'s `rows_to_arrow` gets from one `pa.array` call per column,
//! read straight from the row tuples (that module is the reference, and the caller;
//! tests/test_native.py compares the encoded messages byte for byte).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::flat::{EventEntry, Prediction};

/// Column kinds, as `rows_to_arrow` numbers them.
const F64: u8 = 0;
const I64: u8 = 1;
const I32: u8 = 2;
const BOOL: u8 = 3;
const STR: u8 = 4;

/// One column being built: where its values come from and its buffers so far.
struct Column {
    from_entry: bool, // the row's event entry (`row[0]`), or the row itself
    index: usize,
    kind: u8,
    nullable: bool,
    validity: Vec<u8>, // one bit a row (LSB first), 1 = a value
    nulls: usize,
    values: Vec<u8>, // fixed-width values; the bits of a bool column; a string column's bytes
    offsets: Vec<i32>,
}

/// Set bit `i` of `bits` (grown as needed) to `on`.
fn push_bit(bits: &mut Vec<u8>, i: usize, on: bool) {
    if i % 8 == 0 {
        bits.push(0);
    }
    if on {
        *bits.last_mut().expect("pushed above") |= 1 << (i % 8);
    }
}

impl Column {
    /// Mark row `i` as holding a value or a null; `None` for a null in a column without nulls.
    fn mark(&mut self, i: usize, null: bool) -> Option<()> {
        if null && !self.nullable {
            return None;
        }
        if self.nullable {
            push_bit(&mut self.validity, i, !null);
            self.nulls += usize::from(null);
        }
        Some(())
    }

    /// Append row `i`'s int `x` (None: a null), as `push` appends the Python int: `None`
    /// unless this is an int column that takes it.
    fn push_int(&mut self, i: usize, x: Option<i64>) -> Option<()> {
        self.mark(i, x.is_none())?;
        let x = x.unwrap_or(0);
        match self.kind {
            I64 => self.values.extend_from_slice(&x.to_le_bytes()),
            I32 => self.values.extend_from_slice(&i32::try_from(x).ok()?.to_le_bytes()),
            _ => return None,
        }
        Some(())
    }

    /// Append row `i`'s string `s`; `None` unless this is a string column.
    fn push_str(&mut self, i: usize, s: &str) -> Option<()> {
        if self.kind != STR {
            return None;
        }
        self.mark(i, false)?;
        self.values.extend_from_slice(s.as_bytes());
        self.offsets.push(i32::try_from(self.values.len()).ok()?);
        Some(())
    }

    /// Append row `i`'s float `x` (a `flat::EventEntry`'s ts or feature); `None` unless
    /// this is a float column.
    fn push_f64(&mut self, i: usize, x: f64) -> Option<()> {
        if self.kind != F64 {
            return None;
        }
        self.mark(i, false)?;
        self.values.extend_from_slice(&x.to_le_bytes());
        Some(())
    }

    /// Append row `i`'s value `v`; `None` when it is not one this encoder takes (the
    /// wrong type, a None in a column without nulls, an int out of range).
    fn push(&mut self, i: usize, v: &Bound<'_, PyAny>) -> Option<()> {
        let null = v.is_none();
        self.mark(i, null)?;
        match self.kind {
            F64 => {
                let x = if null { 0.0 } else { v.downcast_exact::<PyFloat>().ok()?.value() };
                self.values.extend_from_slice(&x.to_le_bytes());
            }
            I64 => {
                let x: i64 = if null { 0 } else { v.downcast_exact::<PyInt>().ok()?.extract().ok()? };
                self.values.extend_from_slice(&x.to_le_bytes());
            }
            I32 => {
                let x: i32 = if null { 0 } else { v.downcast_exact::<PyInt>().ok()?.extract().ok()? };
                self.values.extend_from_slice(&x.to_le_bytes());
            }
            BOOL => push_bit(&mut self.values, i, !null && v.downcast_exact::<PyBool>().ok()?.is_true()),
            STR => {
                if !null {
                    self.values.extend_from_slice(v.downcast_exact::<PyString>().ok()?.to_str().ok()?.as_bytes());
                }
                self.offsets.push(i32::try_from(self.values.len()).ok()?);
            }
            _ => return None,
        }
        Some(())
    }
}

/// The columns of `rows` (a list of `ExampleRow` tuples) as `plan` lays them out: one
/// `(from_entry, index, kind, nullable)` a column. Each column comes back as
/// `(validity or None, values, offsets or None, null count)`: the buffers of
/// `pa.Array.from_buffers` (validity only when some value is null). Every row must be
/// in the joiner's common form: its names are the object `names`, its entry (a tuple, or
/// a `flat::EventEntry` whose values are read from its array) has `width` fields and no
/// own features dict (`entry[5] is own`). `None` for a row that is not, or
/// a value this encoder does not take: then the caller converts in Python, which gives
/// the reference answer or error.
#[pyfunction]
pub fn example_columns<'py>(py: Python<'py>, rows: &Bound<'py, PyList>, plan: Vec<(bool, usize, u8, bool)>,
                            names: &Bound<'py, PyAny>, width: usize,
                            own: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyList>>> {
    let n = rows.len();
    let mut cols: Vec<Column> = plan
        .into_iter()
        .map(|(from_entry, index, kind, nullable)| Column {
            from_entry,
            index,
            kind,
            nullable,
            validity: Vec::with_capacity(n / 8 + 1),
            nulls: 0,
            values: Vec::with_capacity(if kind == BOOL { n / 8 + 1 } else { 8 * n }),
            offsets: if kind == STR { vec![0] } else { Vec::new() },
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let Ok(row) = row.downcast_exact::<PyTuple>() else { return Ok(None) };
        if row.len() != 6 || !row.get_borrowed_item(1)?.is(names) {
            return Ok(None);
        }
        let entry = row.get_borrowed_item(0)?;
        if let Ok(flat) = entry.downcast_exact::<EventEntry>() {
            let e = flat.get();
            if e.width() != width {
                return Ok(None);
            }
            for c in cols.iter_mut() {
                let done = match (c.from_entry, c.index) {
                    (false, k) => match row.get_borrowed_item(k) {
                        Ok(v) => c.push(i, &v),
                        Err(_) => None,
                    },
                    (true, 0) => c.push_str(i, &e.id),
                    (true, 1) => c.push_f64(i, e.ts),
                    (true, 2) => c.push_int(i, Some(e.offset)),
                    (true, 3) => c.push_int(i, e.served_version),
                    (true, 4) => match &e.prediction {
                        Prediction::None => c.push(i, &py.None().into_bound(py)), // as the tuple's None
                        Prediction::F(x) => c.push_f64(i, *x),
                        Prediction::S(s) => c.push_str(i, s),
                    },
                    (true, k) => c.push_f64(i, e.features[k - 5]),
                };
                if done.is_none() {
                    return Ok(None);
                }
            }
            continue;
        }
        let Ok(entry) = entry.downcast_exact::<PyTuple>() else { return Ok(None) };
        if entry.len() != width || (width > 5 && entry.get_borrowed_item(5)?.is(own)) {
            return Ok(None);
        }
        for c in cols.iter_mut() {
            let source = if c.from_entry { entry } else { row };
            let Ok(v) = source.get_borrowed_item(c.index) else { return Ok(None) };
            if c.push(i, &v).is_none() {
                return Ok(None);
            }
        }
    }
    let out = PyList::empty(py);
    for c in cols {
        let validity = if c.nulls > 0 { Some(PyBytes::new(py, &c.validity)) } else { None };
        let offsets: Option<Bound<'py, PyBytes>> = if c.kind == STR {
            let bytes: Vec<u8> = c.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
            Some(PyBytes::new(py, &bytes))
        } else {
            None
        };
        out.append((validity, PyBytes::new(py, &c.values), offsets, c.nulls))?;
    }
    Ok(Some(out))
}
