"""Experiment tracking: every training run recorded by Sacred, in a local journal and in MongoDB.

`run_training` wraps the train stage in a Sacred run; `records` reads runs back from either backend;
`sync` copies the journal's runs into MongoDB. Sacred and pymongo are imported only when used.
"""

from edge.tracking.experiment import run_training

__all__ = ["run_training"]
