"""Experiment tracking: runs recorded by Sacred, in a local journal and in MongoDB.

`tracked_run` runs a body of work (the train stage, `edge.pipeline.tracked_train_stage`) as a Sacred
run; `records` reads runs back from either backend; `sync` copies the journal's runs into MongoDB.
Sacred and pymongo are imported only when used. Tracking imports nothing of the pipeline: the
pipeline calls it.
"""

from edge.tracking.experiment import Recorder, TrackedRun, run_info, tracked_run

__all__ = ["Recorder", "TrackedRun", "run_info", "tracked_run"]
