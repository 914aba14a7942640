"""Probes that run a model to measure it: what training made it forget (``forgetting.py``). Above inference."""
