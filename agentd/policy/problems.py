"""A problem found in a policy file: where (file, line, key path) and what was expected."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when the file as a whole is at fault
    key: str  # dotted key path, e.g. "tools[2].memory.max"; "" for the whole document
    message: str  # what was expected, e.g. "expected a size such as 512M, got 'lots'"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '<document>'}: {self.message}"

    def to_json(self) -> dict:
        return asdict(self)
