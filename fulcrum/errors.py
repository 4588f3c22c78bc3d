"""Errors every layer may raise; the CLI answers them with one clean message and exit code 2."""


class StageError(ValueError):
    """A stage stopped for a named reason it states (bad data, implausible scores, ...), not a bug."""
