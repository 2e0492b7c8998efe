"""Monitoring: the prediction log, the training-time reference profile, drift scores, the model
server's live gauges (`live`, wired in by `edge.serving.app.create_app`) and reports."""
