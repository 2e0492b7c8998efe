"""Drift of recent predictions against the reference profile, one score per signal.

- input mean, std and ink fraction, and the confidence: two-sample Kolmogorov-Smirnov
  (scipy.stats.ks_2samp). An alert needs both a large effect (the statistic D above the threshold)
  and significance (p below ks_pvalue), so neither a handful of records nor a flood of traffic with
  a negligible difference raises one.
- pooled pixel-intensity histogram: the population stability index (PSI).
- predicted-class mix: chi-square test of homogeneity (scipy.stats.chi2_contingency) of the
  reference counts against the recent counts.
- penultimate-layer embeddings (PCA-projected): maximum mean discrepancy with a Gaussian kernel and
  a permutation test. scipy has no MMD and it is twenty lines of numpy, so it is written here
  rather than pulling in a kernel-test library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats

from edge.monitoring.profile import ReferenceProfile
from edge.monitoring.settings import MonitoringSettings
from edge.monitoring.summaries import SCALARS

Record = dict[str, Any]
# PSI takes logs of bin fractions: an empty bin counts as this fraction instead of infinity.
PSI_FLOOR = 1e-4
# The recent side of MMD is subsampled to this many records: the kernel matrix grows as its square.
MMD_MAX_RECENT = 500
SIGNALS = ("input.mean", "input.std", "input.ink", "input.intensity", "confidence", "class_mix", "embedding")


@dataclass(frozen=True)
class SignalScore:
    """One signal's drift: the test, its statistic and p-value, their limits and the verdict.

    `statistic_limit` is an effect size the statistic must exceed (KS, PSI), `p_value_limit` a
    significance the p-value must fall under (KS, chi-square, MMD); a KS alert needs both. `threshold`
    is the one limit the test is known by (the statistic's for KS and PSI, the p-value's otherwise).
    """

    signal: str
    test: str
    statistic: float
    threshold: float
    alert: bool
    p_value: float | None = None
    note: str = ""
    statistic_limit: float | None = None
    p_value_limit: float | None = None


@dataclass(frozen=True)
class DriftResult:
    """Every signal's score for one set of recent records."""

    count: int
    scores: list[SignalScore]
    recent_class_mix: list[float]
    start: str | None = None
    end: str | None = None
    enough: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        """Whether any signal drifted."""
        return any(score.alert for score in self.scores)

    @property
    def alerting(self) -> list[str]:
        """The signals that drifted."""
        return [score.signal for score in self.scores if score.alert]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary."""
        return {
            "count": self.count,
            "start": self.start,
            "end": self.end,
            "enough_data": self.enough,
            "alert": self.alert,
            "alerting": self.alerting,
            "recent_class_mix": self.recent_class_mix,
            "scores": {score.signal: asdict(score) for score in self.scores},
        }


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two binned distributions (fractions or counts)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), 0)
    a = np.maximum(np.asarray(actual, dtype=np.float64), 0)
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def mmd_permutation_test(
    reference: np.ndarray, recent: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Return the squared MMD (Gaussian kernel, median-distance bandwidth) and its permutation p-value."""
    pooled = np.concatenate([reference, recent]).astype(np.float64)
    squared = np.sum(pooled**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0)
    positive = distances[distances > 0]
    bandwidth = float(np.median(positive)) if positive.size else 1.0
    kernel = np.exp(-distances / bandwidth)
    # MMD^2 (the biased V-statistic) is w'Kw with w = +1/n on reference rows and -1/m on recent ones;
    # a permutation only shuffles w, so every permutation is one column of a single matrix product.
    n, m = len(reference), len(recent)
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    columns = np.stack([weights] + [rng.permutation(weights) for _ in range(permutations)], axis=1)
    values = np.einsum("ij,ij->j", columns, kernel @ columns)
    observed = float(values[0])
    return observed, float((np.sum(values[1:] >= observed) + 1) / (permutations + 1))


def _ks(
    signal: str, reference: Sequence[float], recent: np.ndarray, settings: MonitoringSettings
) -> SignalScore:
    result = stats.ks_2samp(np.asarray(reference, dtype=np.float64), recent)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return SignalScore(
        signal,
        "ks",
        statistic,
        settings.ks_threshold,
        statistic > settings.ks_threshold and p_value < settings.ks_pvalue,
        p_value,
        statistic_limit=settings.ks_threshold,
        p_value_limit=settings.ks_pvalue,
    )


def _class_mix(profile: ReferenceProfile, class_ids: np.ndarray, settings: MonitoringSettings) -> SignalScore:
    classes = len(profile.class_names)
    recent = np.bincount(class_ids, minlength=classes)[:classes].astype(np.float64)
    reference = np.asarray(profile.class_mix, dtype=np.float64) * profile.count
    # A class neither side ever predicted carries no information and would divide by zero.
    used = (recent + reference) > 0
    table = np.stack([reference[used], recent[used]])
    if used.sum() < 2:
        return SignalScore(
            "class_mix",
            "chi2",
            0.0,
            settings.chi2_pvalue,
            False,
            1.0,
            "a single class",
            p_value_limit=settings.chi2_pvalue,
        )
    result = stats.chi2_contingency(table)
    p_value = float(result.pvalue)
    return SignalScore(
        "class_mix",
        "chi2",
        float(result.statistic),
        settings.chi2_pvalue,
        p_value < settings.chi2_pvalue,
        p_value,
        p_value_limit=settings.chi2_pvalue,
    )


def compare(
    profile: ReferenceProfile,
    records: Sequence[Record],
    settings: MonitoringSettings,
    *,
    with_mmd: bool = True,
    seed: int = 0,
) -> DriftResult:
    """Score the drift of `records` against `profile` on every signal."""
    times = [r["time"] for r in records]
    start, end = (min(times), max(times)) if times else (None, None)
    class_ids = np.asarray([int(r["class_id"]) for r in records], dtype=np.int64)
    counts = np.bincount(class_ids, minlength=len(profile.class_names))[: len(profile.class_names)]
    mix = (counts / max(len(records), 1)).round(4).tolist()
    if len(records) < settings.min_records:
        return DriftResult(len(records), [], mix, start, end, enough=False)

    scores = [
        _ks(f"input.{name}", profile.inputs[name], np.asarray([r["input"][name] for r in records]), settings)
        for name in SCALARS
    ]
    pooled = np.mean([r["input"]["histogram"] for r in records], axis=0)
    value = psi(profile.intensity_histogram, pooled)
    scores.append(
        SignalScore(
            "input.intensity",
            "psi",
            value,
            settings.psi_threshold,
            value > settings.psi_threshold,
            statistic_limit=settings.psi_threshold,
        )
    )
    scores.append(
        _ks("confidence", profile.confidence, np.asarray([r["confidence"] for r in records]), settings)
    )
    scores.append(_class_mix(profile, class_ids, settings))
    embedded = [r["embedding"] for r in records if "embedding" in r]
    if with_mmd and len(embedded) >= settings.min_records:
        rng = np.random.default_rng(seed)
        recent = np.asarray(embedded, dtype=np.float64)
        if len(recent) > MMD_MAX_RECENT:
            recent = recent[rng.choice(len(recent), MMD_MAX_RECENT, replace=False)]
        reference = np.asarray(profile.embedding_sample, dtype=np.float64)
        statistic, p_value = mmd_permutation_test(reference, recent, settings.mmd_permutations, rng)
        scores.append(
            SignalScore(
                "embedding",
                "mmd",
                statistic,
                settings.mmd_pvalue,
                p_value < settings.mmd_pvalue,
                p_value,
                p_value_limit=settings.mmd_pvalue,
            )
        )
    elif with_mmd:
        scores.append(
            SignalScore(
                "embedding",
                "mmd",
                0.0,
                settings.mmd_pvalue,
                False,
                None,
                "too few records with embeddings",
                p_value_limit=settings.mmd_pvalue,
            )
        )
    return DriftResult(len(records), scores, mix, start, end)


# Widths of the drift-over-time buckets, clock-aligned: the smallest that gives at most MAX_POINTS.
BUCKET_SECONDS = (5, 15, 30, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400)
MAX_POINTS = 24
# Predictions that all came within this span (a simulation) are windowed by count, not by time.
BURST_SECONDS = 60


def over_time(
    profile: ReferenceProfile, records: Sequence[Record], settings: MonitoringSettings
) -> list[DriftResult]:
    """Score `records` window by window, a point per window (MMD left out: it costs the most).

    Windows are clock-aligned time buckets (5 s to a week, the smallest width giving at most
    MAX_POINTS); a bucket with fewer than min_records predictions is a point without scores. When
    everything came within BURST_SECONDS (a simulation) or fewer than two buckets can be judged,
    the windows are runs of consecutive predictions instead, min_records or more each. Each
    result's `extra["window"]` names its window.
    """
    ordered = sorted(records, key=lambda r: r["time"])
    if not ordered:
        return []
    stamps = [datetime.fromisoformat(r["time"]).timestamp() for r in ordered]
    width = next(
        (w for w in BUCKET_SECONDS if int(stamps[-1] // w) - int(stamps[0] // w) < MAX_POINTS),
        BUCKET_SECONDS[-1],
    )
    buckets: dict[int, list[Record]] = {}
    for stamp, record in zip(stamps, ordered, strict=True):
        buckets.setdefault(int(stamp // width), []).append(record)
    groups = list(buckets.values())
    name = f"{_duration(width)} of predictions"
    burst = stamps[-1] - stamps[0] < BURST_SECONDS
    if burst or sum(len(group) >= settings.min_records for group in groups) < 2:
        size = max(settings.min_records, -(-len(ordered) // MAX_POINTS))
        groups = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        if len(groups) > 1 and len(groups[-1]) < settings.min_records:
            last = groups.pop()
            groups[-1] = groups[-1] + last
        name = (
            f"{size:,} consecutive predictions (all came within {_duration(BURST_SECONDS)})"
            if burst
            else f"{size:,} consecutive predictions (too few windows of {_duration(width)} to judge)"
        )
    return [
        replace(compare(profile, group, settings, with_mmd=False), extra={"window": name}) for group in groups
    ]


def _duration(seconds: int) -> str:
    for unit, length in (("week", 604_800), ("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds % length == 0:
            count = seconds // length
            return f"{count} {unit}s" if count > 1 else f"1 {unit}"
    return f"{seconds} seconds"
