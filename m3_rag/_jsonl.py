"""Reading JSON Lines files, with errors that name the file and the line."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator


def iter_jsonl(
    path: str | os.PathLike[str], error: type[Exception] = ValueError, encoding: str = "utf-8"
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for every non-blank line of ``path`` (numbers start at 1).

    A line that is not valid JSON raises ``error("<path>, line <n>: not valid JSON (...)")``; checking
    the shape of each value is the caller's job.
    """
    with open(path, encoding=encoding) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}, line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            yield lineno, value
