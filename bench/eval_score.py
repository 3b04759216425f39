"""``bench eval``, step 4: score an output directory the harness filled (``medq.scoring``).

One row per task for the sample, and one per other output kind the records carry (fields
``output_<kind>``, ``medq.scoring.output_kinds``): ``<name>/<kind>`` with its own preset, so the
comparisons pair it with the baselines like any mode.
"""

from __future__ import annotations

from pathlib import Path

from medq.scoring import FeatureCache, output_kinds, score_task_dir


def score_outputs(out_dir: Path, meta: dict, items: list[dict], tasks: list[str], *,
                  channel: str, features: FeatureCache | None) -> tuple[list[dict], list[dict]]:
    """(leaderboard rows, per-image rows) of ``out_dir``: each task's records against the ids of
    ``items`` (the images that should be there), reports scored against the items' truth."""
    rows, per_image = [], []
    for task in tasks:
        expected = [str(it["id"]) for it in items if it["task"] == task]
        print(f"[eval] {meta['name']}: scoring {task} ({len(expected)} images)", flush=True)
        truth = {str(it["id"]): it["report"] for it in items if it["task"] == task}
        task_dir = Path(out_dir) / task
        row, pi = score_task_dir(task_dir, expected, {**meta, "task": task}, channel=channel,
                                 features=features, truth=truth)
        rows.append(row)
        per_image += pi
        for kind in output_kinds(task_dir):
            sub = {**meta, "task": task, "name": f"{meta['name']}/{kind}", "output": kind,
                   "preset": f"{meta['preset']}/{kind}" if meta.get("preset") else ""}
            row, pi = score_task_dir(task_dir, expected, sub, channel=channel, features=features,
                                     truth=truth, output_key=f"output_{kind}")
            rows.append(row)
            per_image += pi
    return rows, per_image
