"""Experiments outside the daily cycle, each with its own DVC pipeline."""
