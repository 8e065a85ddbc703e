"""The champion/challenger gate: may a freshly trained candidate replace the serving model?

The trainer scores the champion (the serving model) and the challenger (the candidate) on
the same temporal holdout, the most recent examples the challenger was not trained on, and
hands the per-example losses to :func:`evaluate`. The gate approves only when every check
passes:

* **sample size**: at least ``min_samples`` holdout examples;
* **finite**: no NaN/inf in the challenger's predictions or losses;
* **latency**: measured predict time per example ``<= max_latency_seconds``;
* **artifact size**: serialised model ``<= max_artifact_bytes``;
* **better**: a one-sided paired test of ``d_i = champion_loss_i - challenger_loss_i``
  rejects "the challenger is not better" at level ``alpha`` (``p_value < alpha``), and the
  relative mean-loss improvement is ``>= min_improvement``.

A first model (no champion: ``champion_losses=None``) is judged on the guards alone
(finite, latency, artifact), not on sample size or significance.

Tests (``GateConfig.test``): ``"paired_t"`` (z statistic of the mean difference with the
normal tail, fine for n in the hundreds and more), ``"wilcoxon"`` (signed-rank, normal
approximation with tie correction, robust to heavy-tailed losses) and ``"bootstrap"``
(paired, null-centred, seeded resampling of the differences).

Pure code: no I/O, threads, clock reads or global state; timings and sizes are inputs.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> champion = rng.exponential(1.0, 2000)
>>> report = evaluate(champion, champion * 0.9, config=GateConfig(),
...                   latency_seconds_per_example=1e-5, artifact_bytes=10_000)
>>> report.decision, report.reasons
('approve', ())
>>> evaluate(champion, champion, config=GateConfig()).reasons
('challenger not significantly better: p_value 1 >= alpha 0.05',)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ct_stream.errors import GateError

__all__ = [
    "Decision",
    "GateConfig",
    "GateReport",
    "LossKind",
    "PROBA_EPS",
    "REPORT_KIND",
    "TestName",
    "evaluate",
    "losses",
]

F64 = NDArray[np.float64]

Decision = Literal["approve", "reject"]
TestName = Literal["paired_t", "wilcoxon", "bootstrap"]
LossKind = Literal["log_loss", "cross_entropy", "squared_error"]

#: Probabilities are clipped to ``[PROBA_EPS, 1 - PROBA_EPS]`` before the log (River's clamp).
PROBA_EPS = 1e-15

#: The ``kind`` tag of :meth:`GateReport.to_dict`; bump on format changes.
REPORT_KIND = "ct_stream.gate.GateReport/1"

_BOOTSTRAP_CELLS = 1 << 22  # resample indices drawn per chunk (memory bound, ~32 MB)


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _is_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(value))


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate; every field is checked on construction (:class:`GateError`).

    ``alpha`` is the one-sided significance level, ``min_improvement`` the relative mean-loss
    improvement required (0.01 = challenger's mean loss at least 1% below the champion's),
    ``max_latency_seconds`` the predict budget per example, ``max_artifact_bytes`` the
    serialised size limit. ``bootstrap_resamples`` and ``bootstrap_seed`` are used by
    ``test="bootstrap"`` only (same seed, same inputs: same p-value).

    >>> GateConfig(alpha=0.01).min_samples
    1000
    >>> GateConfig(test="anova")
    Traceback (most recent call last):
    ...
    ct_stream.errors.GateError: config.test: got 'anova'; allowed: 'paired_t' or 'wilcoxon' or 'bootstrap'
    """

    min_samples: int = 1000
    alpha: float = 0.05
    min_improvement: float = 0.0
    max_latency_seconds: float = 0.001
    max_artifact_bytes: int = 50 * 1024 * 1024
    test: TestName = "paired_t"
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.min_samples) or self.min_samples < 2:
            raise GateError("config.min_samples", self.min_samples, "an int >= 2")
        if not _is_number(self.alpha) or not 0.0 < self.alpha < 1.0:
            raise GateError("config.alpha", self.alpha, "a number in (0, 1)")
        if not _is_number(self.min_improvement) or not -1.0 < self.min_improvement < 1.0:
            raise GateError("config.min_improvement", self.min_improvement,
                            "a finite number in (-1, 1) (relative mean-loss improvement)")
        if not _is_number(self.max_latency_seconds) or self.max_latency_seconds <= 0:
            raise GateError("config.max_latency_seconds", self.max_latency_seconds,
                            "a finite number of seconds > 0")
        if not _is_int(self.max_artifact_bytes) or self.max_artifact_bytes < 1:
            raise GateError("config.max_artifact_bytes", self.max_artifact_bytes, "an int >= 1")
        if self.test not in get_args(TestName):
            raise GateError("config.test", self.test, " or ".join(map(repr, get_args(TestName))))
        if not _is_int(self.bootstrap_resamples) or self.bootstrap_resamples < 100:
            raise GateError("config.bootstrap_resamples", self.bootstrap_resamples, "an int >= 100")
        if not _is_int(self.bootstrap_seed) or self.bootstrap_seed < 0:
            raise GateError("config.bootstrap_seed", self.bootstrap_seed, "an int >= 0")


# ------------------------------------------------------------------ per-example losses

def losses(kind: LossKind, y: ArrayLike, p: ArrayLike) -> F64:
    """Per-example losses of predictions ``p`` against labels ``y``.

    * ``"log_loss"``: binary; ``y`` 0/1 (or bool), ``p`` = P(y=1) of shape ``(n,)``, clipped
      to ``[1e-15, 1 - 1e-15]`` like River's ``metrics.LogLoss``.
    * ``"cross_entropy"``: multiclass; ``y`` integer class indices in ``[0, k)``, ``p`` of
      shape ``(n, k)`` (class probabilities, not renormalised), ``-ln clip(p[i, y_i])``.
    * ``"squared_error"``: regression; ``(y - p)**2``, ``y`` finite.

    Labels are checked (:class:`GateError`); NaN/inf *predictions* are not an input error
    but give NaN/inf losses, which :func:`evaluate`'s finite guard rejects.

    >>> losses("log_loss", [1, 0], [0.9, 0.2]).round(4).tolist()
    [0.1054, 0.2231]
    >>> losses("cross_entropy", [2, 0], [[0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]).round(4).tolist()
    [0.2231, 0.6931]
    >>> losses("squared_error", [1.0, 2.0], [1.5, 2.0]).tolist()
    [0.25, 0.0]
    """
    if kind not in get_args(LossKind):
        raise GateError("kind", kind, " or ".join(map(repr, get_args(LossKind))))
    ya = np.asarray(y)
    if ya.ndim != 1:
        raise GateError("y.shape", ya.shape, "(n,), one label per example")
    n = ya.shape[0]
    try:
        pa = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise GateError("p", type(p).__name__, f"a numeric array ({e})") from None
    try:
        yv = ya.astype(np.float64)
    except (TypeError, ValueError):
        raise GateError("y", ya.dtype, "numeric labels") from None
    if kind == "cross_entropy":
        if pa.ndim != 2 or pa.shape[0] != n or pa.shape[1] < 2:
            raise GateError("p.shape", pa.shape, f"({n}, k) with k >= 2 class probabilities")
        k = pa.shape[1]
        bad = np.flatnonzero(~(np.isfinite(yv) & (yv == np.round(yv)) & (yv >= 0) & (yv < k)))
        if bad.size:
            raise GateError(f"y[{bad[0]}]", ya[bad[0]].item(), f"a class index in [0, {k})")
        picked = pa[np.arange(n), yv.astype(np.intp)]
        return -np.log(np.clip(picked, PROBA_EPS, 1.0 - PROBA_EPS))
    if pa.shape != (n,):
        raise GateError("p.shape", pa.shape, f"({n},), one prediction per label")
    if kind == "log_loss":
        bad = np.flatnonzero((yv != 0.0) & (yv != 1.0))
        if bad.size:
            raise GateError(f"y[{bad[0]}]", ya[bad[0]].item(), "0/1 or False/True")
        q = np.clip(pa, PROBA_EPS, 1.0 - PROBA_EPS)
        return -np.log(np.where(yv == 1.0, q, 1.0 - q))
    bad = np.flatnonzero(~np.isfinite(yv))
    if bad.size:
        raise GateError(f"y[{bad[0]}]", float(yv[bad[0]]), "a finite number")
    with np.errstate(over="ignore", invalid="ignore"):
        return (yv - pa) ** 2


# ------------------------------------------------------------------ tests

def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _paired_t(d: F64) -> tuple[float, float]:
    """``(z, p)``: z = mean(d) / (sd(d) / sqrt(n)), one-sided p = P(Z > z)."""
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0 or not math.isfinite(sd):  # every difference equal
        z = math.copysign(math.inf, mean) if mean != 0.0 else 0.0
        return z, (0.0 if mean > 0.0 else 1.0)
    z = mean / (sd / math.sqrt(n))
    return z, _normal_sf(z)


def _average_ranks(a: F64) -> F64:
    """Ranks 1..n of ``a``, ties sharing their average rank."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    n = len(s)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _wilcoxon(d: F64) -> tuple[float, float]:
    """``(z, p)`` of the signed-rank test (zeros dropped, tie-corrected normal approximation)."""
    nz = d[d != 0.0]
    n = len(nz)
    if n == 0:
        return 0.0, 1.0
    a = np.abs(nz)
    ranks = _average_ranks(a)
    w_plus = float(ranks[nz > 0.0].sum())
    _, counts = np.unique(a, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(counts**3 - counts)) / 48.0
    mean = n * (n + 1) / 4.0
    if var <= 0.0:
        z = math.copysign(math.inf, w_plus - mean) if w_plus != mean else 0.0
        return z, (0.0 if z > 0 else 1.0)
    z = (w_plus - mean) / math.sqrt(var)
    return z, _normal_sf(z)


def _bootstrap(d: F64, resamples: int, seed: int) -> tuple[float, float]:
    """``(mean(d), p)``: p = (1 + #{null-centred resample means >= mean(d)}) / (B + 1)."""
    rng = np.random.default_rng(seed)
    n, mean = len(d), float(d.mean())
    centred = d - mean
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    hits = 0
    for s in range(0, resamples, chunk):
        b = min(chunk, resamples - s)
        means = centred[rng.integers(0, n, size=(b, n))].mean(axis=1)
        hits += int(np.count_nonzero(means >= mean))
    return mean, (1 + hits) / (resamples + 1)


# ------------------------------------------------------------------ the gate

@dataclass(frozen=True)
class GateReport:
    """The gate's decision and everything it was based on.

    ``reasons`` lists every failed check (empty when approved). Loss statistics are ``None``
    when they could not be computed (no champion, fewer than 2 examples, non-finite losses).
    ``mean_difference`` is champion minus challenger (positive: the challenger is better);
    ``relative_improvement`` is it divided by ``|champion_mean_loss|``. Guards not measured
    (latency or size passed as ``None``) are ``None`` in ``latency_ok`` / ``artifact_ok``.
    """

    decision: Decision
    reasons: tuple[str, ...]
    n: int
    has_champion: bool
    champion_mean_loss: float | None
    challenger_mean_loss: float | None
    mean_difference: float | None
    relative_improvement: float | None
    statistic: float | None
    p_value: float | None
    test: TestName
    enough_samples: bool
    significant: bool | None
    finite_ok: bool
    nonfinite_predictions: int
    nonfinite_losses: int
    latency_ok: bool | None
    latency_seconds_per_example: float | None
    artifact_ok: bool | None
    artifact_bytes: int | None
    config: GateConfig = field(repr=False)

    @property
    def approved(self) -> bool:
        """``decision == "approve"``."""
        return self.decision == "approve"

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict (``json.dumps`` without ``allow_nan`` tricks).

        Non-finite floats (an infinite statistic when all differences are equal) become
        ``None``; ``reasons`` becomes a list and ``config`` a dict.

        >>> import json
        >>> r = evaluate(None, [0.1, 0.2], config=GateConfig())
        >>> json.loads(json.dumps(r.to_dict())) == r.to_dict()
        True
        """
        out: dict[str, Any] = {"kind": REPORT_KIND}
        for key, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


def _check_losses(name: str, values: ArrayLike) -> F64:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise GateError(name, type(values).__name__, f"a numeric 1-d array ({e})") from None
    if arr.ndim != 1:
        raise GateError(f"{name}.shape", arr.shape, "(n,), one loss per holdout example")
    return arr


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate(champion_losses: ArrayLike | None, challenger_losses: ArrayLike, *,
             config: GateConfig, challenger_predictions: ArrayLike | None = None,
             latency_seconds_per_example: float | None = None,
             artifact_bytes: int | None = None) -> GateReport:
    """Decide whether the challenger may replace the champion; see the module docstring.

    ``champion_losses`` and ``challenger_losses`` are per-example losses on the same holdout
    rows in the same order (``None`` champion: first model, guards only). The champion's
    losses must be finite (:class:`GateError` otherwise: the comparison would be
    meaningless); the challenger's may not be, which rejects it. ``challenger_predictions``
    (any shape) is only checked for NaN/inf. ``latency_seconds_per_example`` and
    ``artifact_bytes`` are measured by the caller; ``None`` skips that guard (recorded as
    ``None`` in the report).
    """
    if not isinstance(config, GateConfig):
        raise GateError("config", config, "a GateConfig")
    chall = _check_losses("challenger_losses", challenger_losses)
    n = len(chall)
    champ: F64 | None = None
    if champion_losses is not None:
        champ = _check_losses("champion_losses", champion_losses)
        if champ.shape != chall.shape:
            raise GateError("champion_losses.shape", champ.shape,
                            f"{chall.shape}, the challenger's: the same holdout rows")
        bad = np.flatnonzero(~np.isfinite(champ))
        if bad.size:
            raise GateError(f"champion_losses[{bad[0]}]", float(champ[bad[0]]),
                            "a finite number (no NaN/inf)")
    if latency_seconds_per_example is not None and (
            not _is_number(latency_seconds_per_example) or latency_seconds_per_example < 0):
        raise GateError("latency_seconds_per_example", latency_seconds_per_example,
                        "None or a finite number of seconds >= 0")
    if artifact_bytes is not None and (not _is_int(artifact_bytes) or artifact_bytes < 0):
        raise GateError("artifact_bytes", artifact_bytes, "None or an int >= 0")

    reasons: list[str] = []
    # --- guards
    enough = n >= config.min_samples
    if champ is not None and not enough:
        reasons.append(f"not enough holdout examples: got {n}, need {config.min_samples}")
    bad_pred = 0
    if challenger_predictions is not None:
        try:
            pred = np.asarray(challenger_predictions, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise GateError("challenger_predictions", type(challenger_predictions).__name__,
                            f"a numeric array ({e})") from None
        bad_pred = int(np.count_nonzero(~np.isfinite(pred)))
        if bad_pred:
            reasons.append(f"non-finite challenger predictions: {bad_pred} of {pred.size}")
    bad_loss = int(np.count_nonzero(~np.isfinite(chall)))
    if bad_loss:
        reasons.append(f"non-finite challenger losses: {bad_loss} of {n}")
    finite_ok = bad_pred == 0 and bad_loss == 0
    latency_ok: bool | None = None
    if latency_seconds_per_example is not None:
        latency_ok = latency_seconds_per_example <= config.max_latency_seconds
        if not latency_ok:
            reasons.append(f"predict latency {_fmt(latency_seconds_per_example)} s/example "
                           f"over budget {_fmt(config.max_latency_seconds)} s")
    artifact_ok: bool | None = None
    if artifact_bytes is not None:
        artifact_ok = artifact_bytes <= config.max_artifact_bytes
        if not artifact_ok:
            reasons.append(f"artifact {artifact_bytes} bytes over limit "
                           f"{config.max_artifact_bytes} bytes")

    # --- comparison
    champ_mean = chall_mean = diff = rel = stat = p = None
    significant: bool | None = None
    if finite_ok and n:
        chall_mean = float(chall.mean())
    if champ is not None and n:
        champ_mean = float(champ.mean())
    if champ is not None and finite_ok and n >= 2:
        d = champ - chall
        assert champ_mean is not None and chall_mean is not None
        diff = float(d.mean())
        if champ_mean != 0.0:
            rel = diff / abs(champ_mean)
        else:
            rel = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        if config.test == "paired_t":
            stat, p = _paired_t(d)
        elif config.test == "wilcoxon":
            stat, p = _wilcoxon(d)
        else:
            stat, p = _bootstrap(d, config.bootstrap_resamples, config.bootstrap_seed)
        significant = p < config.alpha
        if not significant:
            reasons.append(f"challenger not significantly better: p_value {_fmt(p)} "
                           f">= alpha {_fmt(config.alpha)}")
        if rel < config.min_improvement:
            reasons.append(f"relative improvement {_fmt(rel)} below "
                           f"min_improvement {_fmt(config.min_improvement)}")
    return GateReport(
        decision="reject" if reasons else "approve", reasons=tuple(reasons), n=n,
        has_champion=champ is not None, champion_mean_loss=champ_mean,
        challenger_mean_loss=chall_mean, mean_difference=diff, relative_improvement=rel,
        statistic=stat, p_value=p, test=config.test, enough_samples=enough,
        significant=significant, finite_ok=finite_ok, nonfinite_predictions=bad_pred,
        nonfinite_losses=bad_loss, latency_ok=latency_ok,
        latency_seconds_per_example=(None if latency_seconds_per_example is None
                                     else float(latency_seconds_per_example)),
        artifact_ok=artifact_ok,
        artifact_bytes=None if artifact_bytes is None else int(artifact_bytes), config=config)
