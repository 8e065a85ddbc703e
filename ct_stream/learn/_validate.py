"""Input checks shared by the learners and monitors of :mod:`ct_stream.learn`."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ct_stream.errors import LearnError


def finite_matrix(X: ArrayLike, n_features: int) -> NDArray[np.float64]:
    """``X`` as a float64 array of shape ``(rows, n_features)`` with only finite values,
    or :class:`~ct_stream.errors.LearnError` naming the first bad element."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise LearnError("X", type(X).__name__, f"a numeric 2-d array ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise LearnError("X.shape", arr.shape, f"(rows, {n_features})")
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise LearnError(f"X[{r}, {c}]", float(arr[r, c]), "a finite number (no NaN/inf)")
    return arr
