"""Experiments built on bpnn_jax (run as modules, e.g. ``python -m experiments.grid``)."""
