"""Serve the exported model over HTTP, as Vertex AI runs a custom container."""
