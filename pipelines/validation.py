"""Data-contract problems: each names the table, the column and the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    table: str
    column: str
    reason: str
    count: int = 0
    examples: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        rows = f" ({self.count} rows" + (f", e.g. {self.examples}" if self.examples else "") + ")" if self.count else ""
        return f"{where}: {self.reason}{rows}"


class ContractError(ValueError):
    """Input data break Fulcrum's contract; nothing was written."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = [f"{len(self.problems)} data contract problem(s):"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ProblemLog:
    """Collects problems during a validation pass, then raises them all at once."""

    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.problems: list[Problem] = []

    def add(self, table: str, column: str, reason: str, bad_values: Any = None, count: int | None = None) -> None:
        examples: list[Any] = []
        n = 0
        if bad_values is not None:
            vals = list(bad_values)
            n = len(vals)
            examples = [v.item() if hasattr(v, "item") else v for v in vals[: self.max_examples]]
        self.problems.append(Problem(table, column, reason, count if count is not None else n, examples))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ContractError(self.problems)
