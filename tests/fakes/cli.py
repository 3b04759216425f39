"""Running a stage's ``main`` in-process and reading its one-line refusal.

    err = refusal(train_main, ["--set", "run.seed=-1"], capsys)   # asserts exit 2, one line
"""

from __future__ import annotations

from collections.abc import Callable

REFUSED = 2
"""The exit code of a one-line refusal in every stage (``python -m train --help``,
``python -m infer --help``)."""


def refusal(main: Callable[[list[str]], int], argv: list[str], capsys) -> str:
    """Run ``main(argv)``, assert it refused with exit code 2 and exactly one line on stderr (no
    traceback), and return that line."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()
             and not line.startswith(("note:", "WARNING", "INFO"))]
    assert rc == REFUSED, (rc, err)
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]
