"""dciodvfy on an input and on its de-identified output: the error lines the output adds.

A de-identified object may keep the errors its source had (a date range in a stored DA is
invalid in the source too), but it must not add any. Lines are compared after their values are
taken out (``[1] = <...>``, the numbers after ``=`` and UIDs), so a shifted date, a remapped
UID or a research ID in place of a name does not count as a new error while a new kind of error
on an attribute does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import require_program

_VALUE = re.compile(r"\[\d+\] = <[^>]*>")
_NUMBER = re.compile(r"= \d+")
_UID = re.compile(r"\d+(\.\d+){2,}|(?<=UID )\d+\b")


def error_lines(path: Path) -> set[str]:
    """The ``Error`` lines dciodvfy prints for ``path``, values taken out, spaces collapsed."""
    dciodvfy = require_program("dciodvfy")
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    out: set[str] = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.startswith("Error"):
            continue
        line = _UID.sub("<uid>", _NUMBER.sub("= N", _VALUE.sub("[n] = <>", line)))
        out.add(re.sub(r"\s+", " ", line.strip()))
    return out


def new_errors(source: Path, output: Path) -> list[str]:
    """Error lines of ``output`` that ``source`` does not have (values ignored), sorted."""
    return sorted(error_lines(output) - error_lines(source))
