"""The one exception type users see: a single line saying what was wrong and what would be right."""


class EdgeSparseError(Exception):
    """Bad input or an unmet goal. The CLI prints `error: <message>` and exits non-zero."""

    exit_code = 2


class BudgetError(EdgeSparseError):
    """No candidate met the target's budgets; the message lists the best ones found."""

    exit_code = 3


class GateError(EdgeSparseError):
    """A numeric gate failed (parity, accuracy floor); the message says by how much."""

    exit_code = 4
