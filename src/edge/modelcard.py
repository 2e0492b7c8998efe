"""The model card: what a model is, where it came from, how good it is and where it fails.

One card per model, in Markdown (for git and terminals) and in a self-contained HTML page (plots
embedded, no external resource), built from the model's metadata and the test suite's results.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge import calibration
from edge.data import CLASS_NAMES
from edge.evaluate import confusion_png
from edge.model import predict
from edge.model_tests import SuiteResult

MARKDOWN_FILE = "model-card.md"
HTML_FILE = "model-card.html"

INTENDED_USE = (
    "Classifies 28x28 grayscale images of a single garment, light on a dark background, centred and "
    "scaled as in Fashion-MNIST, into one of its 10 classes. A demonstration model for an MLOps "
    "reference stack: not for decisions about people, and not for photographs."
)
LIMITS = (
    "Photographs, colour images, several garments in one image, dark garments on a light background "
    "(invert them first) and garments of other kinds are outside what it was trained on: it still "
    "answers one of the 10 classes, with a confidence that means nothing there. "
    "Upper-body garments (T-shirt/top, Shirt, Pullover, Coat) are the hard cases."
)


@dataclass
class Card:
    """Everything a card shows, as plain data."""

    metadata: dict[str, Any]
    suite: SuiteResult
    history: list[dict[str, float]] = field(default_factory=list)
    # The gate's verdict, when the card is made by the evaluate stage.
    with_checks: bool = False
    # When, from which commit and in which tracked run the model was made (`edge.model.read_run`):
    # shown by the evaluate stage's card in reports/, never by the card inside the model folder, whose
    # bytes the inputs decide.
    run: dict[str, Any] | None = None

    def confusions(self, top: int = 5) -> list[tuple[str, str, int, float]]:
        """The most frequent mistakes: actual, predicted, count and share of the actual class."""
        cm = self.suite.evaluation.confusion
        pairs = [
            (CLASS_NAMES[a], CLASS_NAMES[p], int(cm[a, p]), float(cm[a, p] / max(cm[a].sum(), 1)))
            for a in range(len(CLASS_NAMES))
            for p in range(len(CLASS_NAMES))
            if a != p and cm[a, p]
        ]
        return sorted(pairs, key=lambda row: -row[2])[:top]


def _lineage_rows(metadata: dict[str, Any], run: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    lineage = metadata.get("lineage") or {}
    data = lineage.get("data_version") or {}
    data_text = (
        ", ".join(f"{path} {md5}" for path, md5 in sorted(data.items()))
        if isinstance(data, dict)
        else str(data)
    )
    precision = metadata.get("precision") or {}
    calibration_info = metadata.get("calibration") or {}
    rows = [
        ("model", f"{metadata.get('name', '?')} version {metadata.get('version', '?')}"),
        ("data version", data_text or "unknown"),
        ("compute precision", f"{precision.get('policy', '?')} ({precision.get('reason', '')})"),
    ]
    if run is not None:
        git = run.get("git") or {}
        commit = str(git.get("commit") or "unknown")
        if git.get("dirty"):
            commit += " (uncommitted changes)"
        rows[1:1] = [
            ("created", str(run.get("created") or "?")),
            ("git commit", commit + (f" on {git['branch']}" if git.get("branch") else "")),
            ("tracked run", str(run.get("tracking_run_id") or "not recorded")),
            ("Vertex AI job", str(run.get("vertex_job") or "none")),
        ]
    if calibration_info:
        rows.append(("temperature", f"{calibration_info.get('temperature', 1.0):.3f} (fitted on validation)"))
    return rows


def _params_rows(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    params = ((metadata.get("lineage") or {}).get("params") or {}).get("train") or {}

    def flat(prefix: str, value: Any) -> list[tuple[str, str]]:
        if isinstance(value, dict):
            return [row for k, v in value.items() for row in flat(f"{prefix}{k}.", v)]
        return [(prefix.rstrip("."), str(value))]

    return flat("train.", params)


def _metric_rows(card: Card) -> list[tuple[str, str]]:
    suite = card.suite
    worst, recall = suite.worst_class()
    validation = card.metadata.get("validation") or {}
    calibration_info = card.metadata.get("calibration") or {}
    rows = [
        ("test accuracy", f"{suite.evaluation.accuracy:.2%}"),
        ("test loss (cross-entropy)", f"{suite.evaluation.loss:.4f}"),
        ("validation accuracy", f"{validation['val_accuracy']:.2%}" if "val_accuracy" in validation else "-"),
        ("worst class (recall)", f"{worst} {recall:.3f}"),
        ("expected calibration error, test", f"{suite.ece:.4f}"),
    ]
    if calibration_info:
        rows.append(
            (
                "ECE on validation, before / after temperature",
                f"{calibration_info['val_ece_uncalibrated']:.4f} / {calibration_info['val_ece']:.4f}",
            )
        )
    if suite.clear_found:
        rows.append(
            (
                "clear examples right",
                f"{suite.clear_found - len(suite.clear_wrong)} of {suite.clear_found}",
            )
        )
    return rows


def _robustness_rows(card: Card) -> list[tuple[str, str, str]]:
    rows = [("clean", f"{card.suite.evaluation.accuracy:.2%}", "100.00%")]
    rows += [
        (r.perturbation.describe(), f"{r.accuracy:.2%}", f"{r.unchanged:.2%}") for r in card.suite.robustness
    ]
    return rows


def _md_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _failure_modes(card: Card) -> list[str]:
    return [
        f"{actual} taken for {predicted}: {count} test images ({share:.1%} of {actual})"
        for actual, predicted, count, share in card.confusions()
    ]


def verdict_line(card: Card) -> str:
    """The suite's verdict in one line: passed, or how many checks failed and which."""
    failed = card.suite.failed
    if not failed:
        return f"Verdict: passed, all {len(card.suite.checks)} checks."
    names = "; ".join(check.name + (f" ({check.note})" if "class" in check.name else "") for check in failed)
    return f"Verdict: FAILED, {len(failed)} of {len(card.suite.checks)} checks ({names}): not to be served."


def markdown(card: Card) -> str:
    """The card as Markdown."""
    m = card.metadata
    per_class = card.suite.evaluation.per_class()
    parts = [
        f"# Model card: {m.get('name', 'model')} {m.get('version', '')}",
        "## Intended use\n\n" + INTENDED_USE,
        "## Limits\n\n" + LIMITS,
        "## Lineage\n\n" + _md_table(("", ""), _lineage_rows(m, card.run)),
        "## Metrics\n\n" + _md_table(("metric", "value"), _metric_rows(card)),
        "## Per class (test set)\n\n"
        + _md_table(
            ("class", "precision", "recall", "f1"),
            [
                (n, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}")
                for n, s in per_class.items()
            ],
        ),
        "## Robustness (test set)\n\nAccuracy under each perturbation, and the share of predictions "
        "that stay the same.\n\n"
        + _md_table(("perturbation", "accuracy", "unchanged"), _robustness_rows(card)),
        "## Known failure modes\n\nThe most frequent confusions on the test set:\n\n"
        + "\n".join(f"- {line}" for line in _failure_modes(card)),
    ]
    if card.suite.clear_wrong:
        parts.append(
            "Clear examples it gets wrong: "
            + ", ".join(
                f"test image {w['id']} ({w['label']} taken for {w['predicted']})"
                for w in card.suite.clear_wrong
            )
        )
    if card.with_checks:
        parts.append(f"## Quality gate\n\n**{verdict_line(card)}**\n\n```\n" + card.suite.table() + "\n```")
    parts.append("## Training parameters\n\n" + _md_table(("parameter", "value"), _params_rows(m)))
    return "\n\n".join(parts) + "\n"


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def figures(card: Card) -> dict[str, bytes]:
    """The card's plots as PNG bytes: confusion, reliability, robustness and, when known, training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = card.suite
    result = {
        "Confusion matrix": confusion_png(suite.evaluation),
        "Reliability": calibration.reliability_png(suite.reliability, suite.ece),
    }
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    rows = _robustness_rows(card)
    values = [float(r[1].rstrip("%")) for r in rows]
    ax.barh([r[0] for r in rows][::-1], values[::-1], color="tab:blue")
    ax.set_xlim(max(0.0, min(values) - 10), 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("Accuracy under each perturbation")
    result["Robustness"] = _png(fig)
    if card.history:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        epochs = [row["epoch"] for row in card.history]
        for key in ("accuracy", "val_accuracy"):
            if all(key in row for row in card.history):
                ax.plot(epochs, [row[key] for row in card.history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_title("Training")
        ax.legend()
        result["Training"] = _png(fig)
    return result


STYLE = """\
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.fail { color: #b00020; font-weight: bold; }
figure { display: inline-block; margin: 0.5rem; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.5rem; overflow-x: auto; }
"""


def _html_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    def cell(value: str) -> str:
        numeric = value.replace(".", "", 1).replace("%", "").replace(" / ", "").replace(".", "").isdigit()
        css = ' class="num"' if numeric else ""
        return f"<td{css}>{html.escape(value)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(str(c)) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(card: Card, plots: dict[str, bytes] | None = None) -> str:
    """The card as one self-contained HTML page: plots are embedded, nothing is fetched."""
    m = card.metadata
    plots = figures(card) if plots is None else plots
    per_class = card.suite.evaluation.per_class()
    title = f"Model card: {m.get('name', 'model')} {m.get('version', '')}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<h2>Intended use</h2><p>{html.escape(INTENDED_USE)}</p>",
        f"<h2>Limits</h2><p>{html.escape(LIMITS)}</p>",
        "<h2>Lineage</h2>" + _html_table(("", ""), _lineage_rows(m, card.run)),
        "<h2>Metrics</h2>" + _html_table(("metric", "value"), _metric_rows(card)),
        "<h2>Per class (test set)</h2>"
        + _html_table(
            ("class", "precision", "recall", "f1"),
            [
                (n, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}")
                for n, s in per_class.items()
            ],
        ),
        "<h2>Robustness (test set)</h2>"
        + _html_table(("perturbation", "accuracy", "unchanged"), _robustness_rows(card)),
        "<h2>Known failure modes</h2><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in _failure_modes(card))
        + "</ul>",
    ]
    if card.with_checks:
        sections.append(
            f"<h2>Quality gate</h2><p><strong>{html.escape(verdict_line(card))}</strong></p>"
            f"<pre>{html.escape(card.suite.table())}</pre>"
        )
    sections.append("<h2>Plots</h2>")
    for name, png in plots.items():
        encoded = base64.b64encode(png).decode("ascii")
        sections.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    sections.append("<h2>Training parameters</h2>" + _html_table(("parameter", "value"), _params_rows(m)))
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def render(card: Card) -> dict[str, str]:
    """Both forms of the card, by file name."""
    return {MARKDOWN_FILE: markdown(card), HTML_FILE: html_page(card)}


def keras_predictor(model: Any, batch_size: int = 1000) -> Any:
    """images -> probabilities with an in-memory Keras model (the train stage's shipped model)."""
    return lambda images: predict(model, images, batch_size)
