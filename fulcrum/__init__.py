"""Fulcrum: heterogeneous multi-treatment uplift modelling and per-request decisions."""

__version__ = "0.1.0"
