"""Exceptions the CLI turns into exit codes: UserError -> 2, GateFailure -> 1."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or usage: shown as one stderr line (message + hint), exit code 2."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class MissingExtraError(UserError):
    """A feature needs an optional dependency group that is not installed."""

    def __init__(self, feature: str, extra: str, package: str) -> None:
        super().__init__(
            f"{package} is not installed, and {feature} need it",
            hint=f"install it with: pip install 'ftaudit[{extra}]'",
        )
        self.extra = extra


class GateFailure(Exception):
    """One or more CI gates failed: exit code 1, one stderr line per failed gate."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines
