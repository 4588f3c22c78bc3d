"""Fulcrum's pipeline stages: one module per stage, each with a typed CLI command."""
