"""Monitoring: the prediction log, the training-time reference profile, drift scores and reports."""
