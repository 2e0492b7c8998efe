"""Edge: MLOps done right, from a laptop to Google Cloud Vertex AI."""

__version__ = "0.1.0"
