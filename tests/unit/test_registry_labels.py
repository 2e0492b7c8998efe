"""Registry labels name the commit, run and job that made a model, from its run record."""

from __future__ import annotations

from edge.cloud.registry import lineage_labels

IMAGE = "europe-docker.pkg.dev/p/edge/trainer@sha256:" + "ab" * 32
LINEAGE = {"data_version": {"data/raw/fashion-mnist": "5f97.dir"}, "params": {"train": {"seed": 1}}}
RUN = {
    "git": {"commit": "C0FFEE" + "0" * 34, "dirty": True},
    "tracking_run_id": "0123abcd",
    "vertex_job": "123 https://console.cloud.google.com/x",
}


def test_labels_come_from_the_run_record_beside_the_model() -> None:
    labels = lineage_labels({"version": "abc123", "lineage": LINEAGE, "run": RUN}, IMAGE)
    assert labels["git_commit"] == "c0ffee" + "0" * 34 and labels["git_dirty"] == "true"
    assert labels["run_id"] == "0123abcd" and labels["vertex_job"].startswith("123-https---console")
    assert labels["model_version"] == "abc123" and labels["data_version"] == "5f97-dir"


def test_a_model_saved_before_run_records_keeps_its_labels() -> None:
    older = {"version": "abc123", "lineage": {**LINEAGE, **RUN}}
    assert lineage_labels(older, IMAGE) == lineage_labels({**older, "run": RUN}, IMAGE)
    # Without a record (judged elsewhere, copied without it) the labels just leave those out.
    assert "run_id" not in lineage_labels({"version": "abc123", "lineage": LINEAGE, "run": None}, IMAGE)
