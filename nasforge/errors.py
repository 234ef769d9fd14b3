"""The one error type every user mistake becomes.

A researcher who mistypes a spec must learn *where* (file, line, column, node path), *what was expected*
and *what was found*, without reading a Python traceback. Every module in nasforge raises
:class:`SpecError` (or a subclass) for user mistakes; anything else escaping to the CLI is our bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """A place in a spec file. ``line`` and ``column`` are 1-based, as editors show them."""

    file: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.file or "<spec>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


@dataclass(eq=False)
class SpecError(Exception):
    """A user mistake in a spec, an override or a command line.

    ``message`` says what is wrong; ``expected`` and ``found`` (when known) say what nasforge wanted and
    what it got; ``hint`` offers a fix (a did-you-mean, a valid range).
    """

    message: str
    location: Location = field(default_factory=Location)
    node_path: str | None = None
    expected: str | None = None
    found: str | None = None
    hint: str | None = None
    key: str | None = None
    """The spec key (attribute or argument name) the mistake is about, so callers can locate its value."""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def with_context(
        self, location: Location | None = None, node_path: str | None = None
    ) -> "SpecError":
        """Fill in location and node path where the raiser did not know them (inner errors win)."""
        if location is not None and self.location.line is None:
            if self.location.file is None or self.location.file == location.file:
                self.location = location
        if location is not None and self.location.file is None:
            self.location = Location(location.file, self.location.line, self.location.column)
        if node_path and not self.node_path:
            self.node_path = node_path
        return self

    def format(self) -> str:
        """The message as the CLI prints it: ``file:line:col: node path: message`` plus details."""
        head = f"{self.location}: "
        if self.node_path:
            head += f"{self.node_path}: "
        lines = [f"{head}{self.message}"]
        if self.expected is not None:
            lines.append(f"  expected: {self.expected}")
        if self.found is not None:
            lines.append(f"  found:    {self.found}")
        if self.hint:
            lines.append(f"  hint:     {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class ShapeError(SpecError):
    """Tensor types that do not fit an op's shape rule (raised by op shape rules)."""


def did_you_mean(word: str, candidates: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """A 'did you mean ...?' hint for a misspelled name, or None if nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, sorted(candidates), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
