"""The study's plan: its budget (``configs/study/<name>.toml``), the training runs it makes, the
points it scores, and how long all of it takes from measured step and scoring times.

    budget = load_budget("full")                     # or a path to a TOML file
    runs = plan_runs(budget)                          # [RunSpec], in the order they are trained
    points = run_points(runs[0], budget)              # [Point] of that run: checkpoint x output

A run is ``python -m train --preset P`` with the study's lengths, seed and checkpoint spacing set
by ``--set`` (``RunSpec.overrides``), written under the study's own directory. A point is one
scored output of one checkpoint (the one-step output at every kept checkpoint, the Euler sample at
the last), plus the shared points every curve starts from or is compared with: the base model the
fine-tunes start from (step 0) and the reference baselines.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from medq.config import CONFIG_DIR, available_presets

BUDGET_DIR = CONFIG_DIR / "study"
STAGES = ("seeds", "curve", "stability")
"""Training order: the main-budget seeds first (their answer comes soonest), the long curves
next, the stability runs last."""
SAMPLE_CHOICES = ("final", "none")


class BudgetError(ValueError):
    """A study budget file that cannot be used (one line naming the file, key and value)."""


@dataclass(frozen=True)
class Budget:
    name: str
    presets: tuple[str, ...]
    curve_steps: int
    curve_every: int
    curve_seed: int
    seed_steps: int
    seeds: tuple[int, ...]
    stability_steps: int
    stability_every: int
    stability_presets: tuple[str, ...]
    images: int
    sample: str
    ratio_max_t: float
    clamp: float
    probe_batches: int
    source: str = ""

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


# (section, key, field, type, rule, check)
_FIELDS = (
    ("", "presets", "presets", list, "a non-empty list of preset names", lambda v: len(v) > 0),
    ("curve", "steps", "curve_steps", int, ">= 1", lambda v: v >= 1),
    ("curve", "every", "curve_every", int, ">= 1", lambda v: v >= 1),
    ("curve", "seed", "curve_seed", int, ">= 0", lambda v: v >= 0),
    ("seeds", "steps", "seed_steps", int, ">= 1", lambda v: v >= 1),
    ("seeds", "seeds", "seeds", list, "a list of distinct seeds >= 0",
     lambda v: len(set(v)) == len(v) and all(isinstance(s, int) and s >= 0 for s in v)),
    ("stability", "steps", "stability_steps", int, ">= 1", lambda v: v >= 1),
    ("stability", "every", "stability_every", int, ">= 1", lambda v: v >= 1),
    ("stability", "presets", "stability_presets", list, "a list of preset names", lambda v: True),
    ("score", "images", "images", int, ">= 2 (per task; intervals need two)", lambda v: v >= 2),
    ("score", "sample", "sample", str, f"one of {', '.join(SAMPLE_CHOICES)}",
     lambda v: v in SAMPLE_CHOICES),
    ("score", "ratio_max_t", "ratio_max_t", float, "in (0, 1]", lambda v: 0 < v <= 1),
    ("score", "clamp", "clamp", float, "> 0", lambda v: v > 0),
    ("score", "probe_batches", "probe_batches", int, ">= 1", lambda v: v >= 1),
)


def budget_file(spec: str) -> Path:
    """``configs/study/<spec>.toml``, or ``spec`` itself when it is a path to a ``.toml`` file."""
    path = Path(spec)
    if path.suffix == ".toml":
        return path
    return BUDGET_DIR / f"{spec}.toml"


def load_budget(spec: str) -> Budget:
    """The budget named ``spec`` (``full``, ``quick``) or read from the TOML file ``spec``; every
    key is required and checked (``BudgetError`` naming the file, key and rule)."""
    path = budget_file(spec)
    if not path.is_file():
        names = sorted(p.stem for p in BUDGET_DIR.glob("*.toml"))
        raise BudgetError(f"study budget {spec!r}: no file {path} (budgets: {', '.join(names)}, "
                          f"or a path to a .toml file)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise BudgetError(f"{path}: not valid TOML: {e}") from None
    values = {}
    for section, key, name, typ, rule, check in _FIELDS:
        table = data if not section else data.get(section, {})
        full = f"{section}.{key}" if section else key
        if not isinstance(table, dict) or key not in table:
            raise BudgetError(f"{path}: missing key {full!r} (expected {rule})")
        value = table[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool) or not check(value):
            raise BudgetError(f"{path}: {full} = {value!r}: expected {rule}")
        values[name] = tuple(value) if typ is list else value
    known = set(available_presets())
    for name in ("presets", "stability_presets"):
        for preset in values[name]:
            if not isinstance(preset, str) or preset not in known:
                raise BudgetError(f"{path}: {name} names {preset!r}, which is no preset of "
                                  f"configs/ (presets: {', '.join(sorted(known))})")
    return Budget(name=path.stem, source=str(path), **values)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    stage: str
    preset: str
    seed: int
    steps: int
    every: int

    @property
    def checkpoints(self) -> list[int]:
        """The steps whose checkpoints the run keeps and the study scores: every ``every`` and
        the last."""
        return sorted(set(range(self.every, self.steps + 1, self.every)) | {self.steps})

    def overrides(self, out_dir: Path) -> list[str]:
        """``--set`` values that make ``python -m train --preset <preset>`` this run: its length,
        seed, validation and checkpoint spacing, a retention that keeps every checkpoint, and the
        study's run directory."""
        import json

        return [f"optim.max_steps={self.steps}", f"run.seed={self.seed}",
                f"run.ckpt_every={self.every}", f"run.val_every={self.every}",
                f"run.keep_last={len(self.checkpoints) + 1}",
                f"run.out_dir={json.dumps(str(Path(out_dir) / 'runs'))}"]

    @property
    def label(self) -> str:
        return f"{self.preset} seed {self.seed} {self.steps} steps"


def plan_runs(budget: Budget) -> list[RunSpec]:
    """Every run of ``budget``, in ``STAGES`` order. A run that two stages ask for (same preset,
    seed and length) is listed once, at its first place, as the stage with the finer checkpoint
    spacing (a seed run as long as the curves is a curve)."""
    wanted = []
    for seed in budget.seeds:
        wanted += [RunSpec("seeds", p, seed, budget.seed_steps, budget.seed_steps)
                   for p in budget.presets]
    wanted += [RunSpec("curve", p, budget.curve_seed, budget.curve_steps, budget.curve_every)
               for p in budget.presets]
    wanted += [RunSpec("stability", p, budget.curve_seed, budget.stability_steps,
                       budget.stability_every) for p in budget.stability_presets]
    out: dict[tuple[str, int, int], RunSpec] = {}
    for r in wanted:
        key = (r.preset, r.seed, r.steps)
        if key not in out or r.every < out[key].every:
            out[key] = r
    return list(out.values())


@dataclass(frozen=True)
class Point:
    """One scored output: ``source`` "run" (a checkpoint of a study run), "init" (the checkpoint
    every fine-tune starts from: step 0 of every curve) or "baseline" (``name`` is the baseline);
    ``output`` "onestep" or "sample" (baselines: "sample", their one output)."""

    source: str
    name: str
    step: int
    output: str
    final: bool = False

    @property
    def key(self) -> str:
        """The point's file stem inside the study's ``scores/`` folder."""
        return f"{self.name}/step_{self.step:06d}-{self.output}"


def run_points(run_name: str, spec: RunSpec, budget: Budget) -> list[Point]:
    """The points of one run: its one-step output at every kept checkpoint, its sample at the last
    (``score.sample = "final"``)."""
    points = [Point("run", run_name, s, "onestep", final=s == spec.steps) for s in spec.checkpoints]
    if budget.sample == "final":
        points.append(Point("run", run_name, spec.steps, "sample", final=True))
    return points


INIT = "init"


def shared_points(budget: Budget, baselines: list[str]) -> list[Point]:
    """Step 0 of every curve (the init checkpoint's one-step output and sample) and the reference
    baselines."""
    out = [Point("init", INIT, 0, "onestep", final=True)]
    if budget.sample == "final":
        out.append(Point("init", INIT, 0, "sample", final=True))
    return out + [Point("baseline", b, 0, "sample", final=True) for b in baselines]


@dataclass
class Timing:
    """Seconds per training step by preset, per validation, and per scored image and point
    (measured: ``bench.study_timing``), with the machine line they were measured under."""

    step_seconds: dict[str, float] = field(default_factory=dict)
    validation_seconds: float = 0.0
    point_image_seconds: dict[str, float] = field(default_factory=dict)
    """By output ("onestep": output, report and scores; "sample"; "baseline")."""
    point_fixed_seconds: dict[str, float] = field(default_factory=dict)
    """By output: what a point costs besides its images (the gradient ratio of a one-step
    point)."""
    job_seconds: float = 0.0
    """What a scoring job pays before its first point (start-up, data, Inception, targets)."""
    measured_on: dict[str, str] = field(default_factory=dict)
    """The machine line (``bench/perf_machine.py``, with its calibration and load) under which
    each part was measured: "steps", "validation", "scoring"."""
    source: str = ""

    def step_time(self, preset: str) -> float:
        if preset in self.step_seconds:
            return self.step_seconds[preset]
        return max(self.step_seconds.values(), default=0.0)

    def run_seconds(self, spec: RunSpec, done_steps: int = 0) -> float:
        """What is left of training ``spec`` after ``done_steps``: its steps and validations."""
        left = max(spec.steps - done_steps, 0)
        vals = sum(1 for s in spec.checkpoints if s > done_steps)
        return left * self.step_time(spec.preset) + vals * self.validation_seconds

    def point_seconds(self, point: Point, images: int, tasks: int) -> float:
        kind = "baseline" if point.source == "baseline" else point.output
        per = self.point_image_seconds.get(kind, self.point_image_seconds.get("onestep", 0.0))
        return self.point_fixed_seconds.get(kind, 0.0) + images * tasks * per

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Timing":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})
