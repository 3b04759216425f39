"""One logging call, several sinks: ``logger.log("loss/ssim", value)``; ``logger.flush(step)``.

Values logged between two flushes are averaged (EDM2's training_stats habit), then written to
``logs/metrics.csv`` (``step,key,value``) and TensorBoard (``logs/tb``). Only the main process
writes (``enabled=False`` on the other ranks). On resume, rows after the resumed step are dropped
from the CSV, so a run interrupted after its last checkpoint has no duplicate steps.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import torch

from medq.files import atomic_path


class Logger:
    def __init__(self, log_dir: Path, *, enabled: bool = True, start_step: int = 0,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.last: dict[str, float] = {}
        self.csv_path = Path(log_dir) / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        _truncate_after(self.csv_path, start_step)
        new = not self.csv_path.exists()
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(HEADER)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(log_dir) / "tb"), purge_step=start_step or None)

    def log(self, key: str, value) -> None:
        """Accumulate ``value`` (float or 0-d tensor) under ``key`` until the next flush."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float().item()
        self.sums[key] += float(value)
        self.counts[key] += 1

    def log_dict(self, values: dict, prefix: str = "") -> None:
        for k, v in values.items():
            self.log(prefix + k, v)

    def flush(self, step: int) -> dict[str, float]:
        """Write the averages of everything logged since the last flush at ``step``; return them."""
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        self.last.update(means)
        if self.enabled and means:
            for k in sorted(means):
                self._csv.writerow([step, k, repr(means[k])])
                if self.tb is not None and math.isfinite(means[k]):
                    self.tb.add_scalar(k, means[k], step)
            self._file.flush()
        return means

    def write(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` at ``step`` now, apart from the running averages (validation)."""
        self.last.update(values)
        if self.enabled and values:
            for k in sorted(values):
                self._csv.writerow([step, k, repr(float(values[k]))])
                if self.tb is not None and math.isfinite(values[k]):
                    self.tb.add_scalar(k, values[k], step)
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


HEADER = ["step", "key", "value"]


def _truncate_after(path: Path, step: int) -> None:
    """Keep the header and the rows up to ``step``; a torn last row (a process killed mid-write)
    is dropped too, and a torn header is written whole again (the first flush writes header and
    rows in one go: a kill there can leave ``st``, and rows appended to it would read as one
    garbled header). Rewritten through a temp file, so a kill here never loses the history."""
    if not path.exists():
        return
    text = path.read_text()
    rows = list(csv.reader(text.splitlines()))
    if not text.endswith("\n") and rows:
        rows[-1] = []  # torn: the process died while writing it
    if not rows:
        path.unlink()
        return

    def whole(r: list[str]) -> bool:
        try:
            return len(r) == 3 and int(r[0]) <= step and float(r[2]) is not None
        except ValueError:
            return False

    kept = [HEADER] + [r for r in rows[1:] if whole(r)]
    if kept != rows:
        with atomic_path(path, fsync=True) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """``logs/metrics.csv`` as {key: {step: value}} (for tests, reports and the benchmarks)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out[row["key"]][int(row["step"])] = float(row["value"])
    return dict(out)
