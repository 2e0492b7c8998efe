"""The drift report: one self-contained HTML page with its plots inline, and a JSON summary."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edge import storage
from edge.monitoring.drift import DriftResult, Record, SignalScore, compare
from edge.monitoring.log import Phase
from edge.monitoring.profile import ReferenceProfile
from edge.monitoring.settings import MonitoringSettings
from edge.monitoring.summaries import HISTOGRAM_BINS, SCALARS

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
REFERENCE_COLOUR = "#4c72b0"
RECENT_COLOUR = "#dd8452"


def by_phase(
    profile: ReferenceProfile,
    records: Sequence[Record],
    phases: Sequence[Phase],
    settings: MonitoringSettings,
) -> list[tuple[Phase, DriftResult]]:
    """Score the records of each simulated phase on their own (those logged between its start and end)."""
    scored = []
    for phase in phases:
        start, end = phase.start.isoformat(), phase.end.isoformat()
        inside = [r for r in records if start <= _utc(r["time"]) <= end]
        if inside:
            scored.append((phase, compare(profile, inside, settings)))
    return scored


def _utc(stamp: str) -> str:
    # Records and phases are both UTC ISO strings; compare them in one form.
    return datetime.fromisoformat(stamp).astimezone(UTC).isoformat()


def _status(result: DriftResult, lost: bool) -> str:
    if result.alert:
        return "alert"
    if result.enough:
        return "ok"
    # Too few records, and some are known to be lost: no verdict at all rather than "not enough".
    return "incomplete log" if lost else "not enough data"


def build_summary(
    result: DriftResult,
    windows: Sequence[DriftResult],
    profile: ReferenceProfile,
    settings: MonitoringSettings,
    context: dict[str, Any],
    phases: Sequence[tuple[Phase, DriftResult]] = (),
) -> dict[str, Any]:
    """The report's content as JSON: for scripts, the webapp's status page and alert routing."""
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        **context,
        "status": _status(result, bool(context.get("lost_writes"))),
        "thresholds": {
            "ks": settings.ks_threshold,
            "ks_pvalue": settings.ks_pvalue,
            "psi": settings.psi_threshold,
            "chi2_pvalue": settings.chi2_pvalue,
            "mmd_pvalue": settings.mmd_pvalue,
            "min_records": settings.min_records,
        },
        "class_names": profile.class_names,
        "reference_class_mix": profile.class_mix,
        "reference_count": profile.count,
        **result.to_dict(),
        "over_time": [
            {
                "window": w.extra.get("window"),
                "start": w.start,
                "end": w.end,
                "count": w.count,
                "enough_data": w.enough,
                "alert": w.alert,
                # Each effect size relative to its limit: above 1 is beyond it.
                "scores": {
                    s.signal: round(s.statistic / s.statistic_limit, 4) for s in w.scores if s.statistic_limit
                },
            }
            for w in windows
        ],
        "phases": [
            {
                "phase": phase.name,
                "run": phase.run,
                "start": phase.start.isoformat(),
                "end": phase.end.isoformat(),
                "sent": phase.images,
                "count": scored.count,
                "status": "alert" if scored.alert else ("ok" if scored.enough else "not enough data"),
                "alerting": scored.alerting,
                # Tests that ran: MMD needs more embedded records than a phase may have.
                "scores": {
                    s.signal: {"statistic": s.statistic, "alert": s.alert} for s in scored.scores if _ran(s)
                },
            }
            for phase, scored in phases
        ],
    }


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    text = buffer.getvalue()
    # Drop the XML prologue and doctype: the SVG is inlined into HTML.
    return text[text.index("<svg") :]


def _plots(profile: ReferenceProfile, records: Sequence[Record], summary: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "svg.hashsalt": "edge"})
    plots: dict[str, str] = {}

    figure, axes = plt.subplots(1, 4, figsize=(13, 2.6))
    for ax, name in zip(axes[:3], SCALARS, strict=True):
        recent = [r["input"][name] for r in records]
        bins = np.linspace(0, max(1e-6, *profile.inputs[name], *recent), 30)
        ax.hist(
            profile.inputs[name],
            bins=bins,
            density=True,
            alpha=0.6,
            label="reference",
            color=REFERENCE_COLOUR,
        )
        if recent:
            ax.hist(recent, bins=bins, density=True, alpha=0.6, label="recent", color=RECENT_COLOUR)
        ax.set_title(f"input {name}")
    edges = np.arange(HISTOGRAM_BINS)
    pooled = (
        np.mean([r["input"]["histogram"] for r in records], axis=0) if records else np.zeros(HISTOGRAM_BINS)
    )
    axes[3].bar(edges - 0.2, profile.intensity_histogram, 0.4, color=REFERENCE_COLOUR, label="reference")
    axes[3].bar(edges + 0.2, pooled, 0.4, color=RECENT_COLOUR, label="recent")
    axes[3].set_yscale("log")
    axes[3].set_xticks(edges, [f"{int(256 / HISTOGRAM_BINS * i)}" for i in edges])
    axes[3].set_title("pixel intensity (share, log)")
    axes[0].legend(frameon=False)
    plots["inputs"] = _svg(figure)

    figure, (mix_ax, conf_ax) = plt.subplots(1, 2, figsize=(13, 2.8), gridspec_kw={"width_ratios": [3, 2]})
    positions = np.arange(len(profile.class_names))
    mix_ax.bar(positions - 0.2, profile.class_mix, 0.4, color=REFERENCE_COLOUR, label="reference")
    mix_ax.bar(positions + 0.2, summary["recent_class_mix"], 0.4, color=RECENT_COLOUR, label="recent")
    mix_ax.set_xticks(positions, profile.class_names, rotation=30, ha="right")
    mix_ax.set_title("predicted-class mix")
    mix_ax.legend(frameon=False)
    bins = np.linspace(0, 1, 26)
    conf_ax.hist(
        profile.confidence, bins=bins, density=True, alpha=0.6, color=REFERENCE_COLOUR, label="reference"
    )
    if records:
        recent = [r["confidence"] for r in records]
        conf_ax.hist(recent, bins=bins, density=True, alpha=0.6, color=RECENT_COLOUR)
    conf_ax.set_title("confidence of the predicted class")
    plots["outputs"] = _svg(figure)

    windows = summary["over_time"]
    signals = list(dict.fromkeys(signal for w in windows for signal in w["scores"]))
    if windows:
        figure, ax = plt.subplots(figsize=(13, 2.8))
        # Naive UTC times: numpy keeps no time zone and warns when given one.
        times = np.array([_naive(w["end"]) for w in windows], dtype="datetime64[ms]")
        for signal in signals:
            ax.plot(times, [w["scores"].get(signal, np.nan) for w in windows], marker="o", label=signal)
        unjudged = [t for t, w in zip(times, windows, strict=True) if not w["enough_data"]]
        if unjudged:
            ax.plot(unjudged, [0.0] * len(unjudged), "x", color="#8c8c8c", label="too few to judge")
        ax.axhline(1.0, color="#c44e52", linestyle="--", linewidth=1, label="limit")
        ax.set_ylabel("statistic / its limit")
        ax.set_title(
            f"drift over time: a point per window of {windows[0]['window']} "
            "(each effect size relative to its limit; above 1 is beyond it)"
        )
        ax.legend(frameon=False, fontsize=7, ncol=4)
        figure.autofmt_xdate()
        plots["over_time"] = _svg(figure)
    return plots


def _ran(score: SignalScore) -> bool:
    """Tell a computed score from the placeholder of a test that had too few records to run."""
    return score.p_value is not None or score.statistic_limit is not None


def _naive(stamp: str) -> str:
    return (
        datetime.fromisoformat(stamp).astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
    )


def _limit(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _score_rows(summary: dict[str, Any]) -> str:
    rows = []
    for signal, score in summary["scores"].items():
        p_value = "" if score["p_value"] is None else f"{score['p_value']:.3g}"
        verdict = "ALERT" if score["alert"] else "ok"
        rows.append(
            f"<tr class='{verdict.lower()}'><td>{html.escape(signal)}</td><td>{score['test']}</td>"
            f"<td>{score['statistic']:.4g}</td><td>{_limit(score.get('statistic_limit'))}</td>"
            f"<td>{p_value}</td><td>{_limit(score.get('p_value_limit'))}</td><td>{verdict}</td></tr>"
        )
    return "\n".join(rows)


def _phase_table(summary: dict[str, Any]) -> str:
    """Drift of each simulated phase, one row per phase, statistics beyond their limit in bold."""
    phases = summary.get("phases") or []
    if not phases:
        return ""
    signals = list(dict.fromkeys(signal for p in phases for signal in p["scores"]))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in signals)
    rows = []
    for phase in phases:
        cells = []
        for signal in signals:
            score = phase["scores"].get(signal)
            text = "" if score is None else f"{score['statistic']:.3g}"
            cells.append(
                f"<td><strong>{text}</strong></td>" if score and score["alert"] else f"<td>{text}</td>"
            )
        started = datetime.fromisoformat(phase["start"]).astimezone(UTC)
        verdict = "alert" if phase["status"] == "alert" else "ok"
        rows.append(
            f"<tr class='{verdict}'><td>{html.escape(phase['phase'])}</td>"
            f"<td>{started:%H:%M:%S}</td><td>{phase['count']:,}</td>{''.join(cells)}"
            f"<td>{html.escape(phase['status'])}</td></tr>"
        )
    return f"""<h2>Drift by simulated phase</h2>
<p class="meta">Each phase of <code>edge monitor simulate</code> judged on its own predictions (statistics;
bold: beyond the limit).</p>
<table id="phases"><tr><th>phase</th><th>from (UTC)</th><th>predictions</th>{head}<th></th></tr>
{"".join(rows)}
</table>"""


def render_html(summary: dict[str, Any], plots: dict[str, str]) -> str:
    """Render the report page; everything (styles, plots) is inline so it can be mailed or archived."""
    status = summary["status"]
    colour = {"alert": "#c44e52", "ok": "#55a868"}.get(status, "#8c8c8c")
    model = html.escape(f"{summary.get('model', '?')} {summary.get('version', '')}")
    figures = "".join(f"<figure>{svg}</figure>" for svg in plots.values())
    alerting = ", ".join(summary["alerting"]) or "none"
    window: dict[str, Any] = summary["window"] if isinstance(summary.get("window"), dict) else {}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edge drift report: {status}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 70rem; color: #222; }}
.status {{ display: inline-block; padding: .2rem .7rem; border-radius: .3rem; color: white;
          background: {colour}; font-weight: bold; text-transform: uppercase; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ padding: .25rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }}
tr.alert td {{ color: #c44e52; font-weight: bold; }}
figure {{ margin: .5rem 0; }} figure svg {{ max-width: 100%; height: auto; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>Drift report <span class="status">{html.escape(status)}</span></h1>
<p id="window">Judged: <strong>{html.escape(str(window.get("label", "the recent predictions")))}</strong>
&middot; {summary["count"]:,} predictions from {html.escape(str(summary.get("start")))} to
{html.escape(str(summary.get("end")))}</p>
<p class="meta">Model {model} &middot; {html.escape(str(summary.get("newest", "")))} &middot;
reference: {summary["reference_count"]} validation images &middot; source
{html.escape(str(summary.get("source")))} &middot; generated {summary["generated"]}</p>
<p>Drifting signals: <strong>{html.escape(alerting)}</strong></p>
<table id="scores"><tr><th>signal</th><th>test</th><th>statistic</th><th>alert above</th><th>p-value</th>
<th>alert below</th><th></th></tr>
{_score_rows(summary)}
</table>
<p class="meta">An alert needs the statistic above its limit (an effect size: KS, PSI) and the p-value
below its limit (significance: KS, chi-square, MMD), where the test has one.</p>
{_phase_table(summary)}
{figures}
</body></html>
"""


def write_report(
    out_dir: str,
    result: DriftResult,
    windows: Sequence[DriftResult],
    profile: ReferenceProfile,
    records: Sequence[Record],
    settings: MonitoringSettings,
    context: dict[str, Any],
    phases: Sequence[tuple[Phase, DriftResult]] = (),
) -> dict[str, Any]:
    """Write report.html and summary.json into `out_dir` (a directory or gs:// prefix); return the summary."""
    summary = build_summary(result, windows, profile, settings, context, phases)
    storage.write_text(storage.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    storage.write_text(
        storage.join(out_dir, REPORT_FILE), render_html(summary, _plots(profile, records, summary))
    )
    return summary
