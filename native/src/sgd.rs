//! `BatchLogisticRegression.learn_batch` (ct_stream/learn/linear.py) as River computes it:
//! one row after the other, test then train, each step written as River's own
//! (`StandardScaler.learn_one`/`transform_one`, `LogisticRegression` with `Log` loss and
//! constant-rate SGD). The Python class keeps the same model in numpy (a fixed point over
//! a block of rows); tests hold both to River's `learn_one` (tests/test_learn.py).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// River's `utils.math.sigmoid`: 0 below -30, 1 above 30.
fn sigmoid(x: f64) -> f64 {
    if x < -30.0 {
        0.0
    } else if x > 30.0 {
        1.0
    } else {
        1.0 / (1.0 + (-x).exp())
    }
}

/// River's `StandardScaler.transform_one` for one feature: 0 where the variance is 0.
fn scaled(x: f64, mean: f64, var: f64) -> f64 {
    if var != 0.0 {
        (x - mean) / var.sqrt()
    } else {
        0.0
    }
}

/// River's `optim.losses.Log.gradient` for a 0/1 label.
fn log_gradient(y: f64, raw: f64) -> f64 {
    let y = if y == 0.0 { -1.0 } else { 1.0 };
    let z = raw * y;
    if z > 18.0 {
        (-z).exp() * -y
    } else if z < -18.0 {
        -y
    } else {
        -y / (z.exp() + 1.0)
    }
}

fn slice<'a>(py: Python<'a>, b: &'a PyBuffer<f64>, len: usize, what: &str) -> PyResult<&'a [pyo3::buffer::ReadOnlyCell<f64>]> {
    match b.as_slice(py) {
        Some(s) if s.len() == len => Ok(s),
        _ => Err(PyValueError::new_err(format!("lr_learn: {what} must be a C-contiguous float64 buffer of {len} values"))),
    }
}

fn slice_mut<'a>(py: Python<'a>, b: &'a PyBuffer<f64>, len: usize, what: &str) -> PyResult<&'a [std::cell::Cell<f64>]> {
    match b.as_mut_slice(py) {
        Some(s) if s.len() == len => Ok(s),
        _ => Err(PyValueError::new_err(format!(
            "lr_learn: {what} must be a writable C-contiguous float64 buffer of {len} values"))),
    }
}

/// Test then train on `rows` rows of `x` (row-major, `n_scaled + n_pass` columns; the
/// first `n_scaled` go through the running scaler): each row's P(y=1) before it is
/// learned into `out`; `mean`, `var` and `coef` are updated in place. Returns the new
/// intercept. `count` is the rows the scaler has seen; `w` optional sample weights.
#[pyfunction]
#[pyo3(signature = (x, y, w, n_scaled, n_pass, count, mean, var, coef, intercept, lr, intercept_lr, out))]
#[allow(clippy::too_many_arguments)]
pub fn lr_learn(py: Python<'_>, x: PyBuffer<f64>, y: PyBuffer<f64>, w: Option<PyBuffer<f64>>, n_scaled: usize,
                n_pass: usize, count: u64, mean: PyBuffer<f64>, var: PyBuffer<f64>, coef: PyBuffer<f64>,
                intercept: f64, lr: f64, intercept_lr: f64, out: PyBuffer<f64>) -> PyResult<f64> {
    let nf = n_scaled + n_pass;
    let rows = y.item_count();
    let x = slice(py, &x, rows * nf, "x")?;
    let y = slice(py, &y, rows, "y")?;
    let w = match &w {
        Some(w) => Some(slice(py, w, rows, "w")?),
        None => None,
    };
    let mean = slice_mut(py, &mean, n_scaled, "mean")?;
    let var = slice_mut(py, &var, n_scaled, "var")?;
    let coef = slice_mut(py, &coef, nf, "coef")?;
    let out = slice_mut(py, &out, rows, "out")?;
    let mut b = intercept;
    let mut z = vec![0.0f64; nf];
    let mut n = count as f64;
    for k in 0..rows {
        let row = &x[k * nf..(k + 1) * nf];
        // predict with the state before the row (transform_one, then the raw dot)
        let mut raw = b;
        for i in 0..nf {
            let xi = row[i].get();
            let zi = if i < n_scaled { scaled(xi, mean[i].get(), var[i].get()) } else { xi };
            raw += coef[i].get() * zi;
        }
        out[k].set(sigmoid(raw));
        // learn: the scaler first (learn_one), then the model on the row scaled with it
        n += 1.0;
        let mut raw = b;
        for i in 0..nf {
            let xi = row[i].get();
            let zi = if i < n_scaled {
                let old = mean[i].get();
                let m = old + (xi - old) / n;
                let v = var[i].get() + ((xi - old) * (xi - m) - var[i].get()) / n;
                mean[i].set(m);
                var[i].set(v);
                scaled(xi, m, v)
            } else {
                xi
            };
            z[i] = zi;
            raw += coef[i].get() * zi;
        }
        let mut g = log_gradient(y[k].get(), raw);
        if let Some(w) = w {
            g *= w[k].get();
        }
        g = g.clamp(-1e12, 1e12);
        b -= intercept_lr * g;
        for i in 0..nf {
            coef[i].set(coef[i].get() - lr * (z[i] * g));
        }
    }
    Ok(b)
}
