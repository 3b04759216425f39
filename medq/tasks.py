"""The image tasks and the enhance degradations: the one list of each, imported by every module
that names them (config, data, harness, bench, demo).

A task is what the model is asked to do with an input image; its scale is the factor between the
input and the output (1 for enhancement, which keeps the size)."""

from __future__ import annotations

TASKS = ("sr2", "sr4", "enhance")
"""Super-resolution x2 and x4 (input: the antialiased bicubic downscale of the target) and
enhancement (input: a degraded copy of the target at the same size)."""

SCALES = {"sr2": 2, "sr4": 4, "enhance": 1}
"""Input-to-output size factor of each task."""

TASK_NAMES = {"sr2": "Super-resolution x2", "sr4": "Super-resolution x4", "enhance": "Enhancement"}
"""Each task's name in plain words, for pages and plots."""

DEGRADATIONS = ("blur", "haze", "illumination", "noise")
"""What an enhancement input suffers from (``medq.data.tasks.degrade``); the instruction names
one of them."""


def check_task(task: str, where: str = "task") -> str:
    """``task`` if it is one of ``TASKS``, else ``ValueError`` naming ``where`` and the choices."""
    if task not in TASKS:
        raise ValueError(f"{where} {task!r}: expected one of {', '.join(TASKS)}")
    return task
