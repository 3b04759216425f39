"""The inference harness: any ``ImageTextModel`` over a dataset -> PNGs + ``records.jsonl``.

    from medq.harness import run_harness, summarize, edit_one
    paths = run_harness(model, items, "runs/x/eval/step_000300-ema", tasks=["sr4"], seed=0,
                        batch_size=8)                  # {"sr4": Path(".../sr4/records.jsonl")}
    summary = summarize(read_records("runs/x/eval/step_000300-ema"))   # medq.harness.summary
    out = edit_one(model, image, "sr4", size=64)      # the demo: one image of any size

``items``: ``medq.data.build_dataset(...)`` or any sequence/iterable of data items (dicts with id,
task, instruction, input (3, h, w), target (3, H, W), mask (1, H, W), quality). Per task it writes
``<out_dir>/<task>/images/<id>_{input,output,target,mask}.png`` and
``<out_dir>/<task>/records.jsonl`` (fields: ``medq.harness.records.FIELDS`` plus ``model``,
``sample_seed``, ``data_sha256``, ``collapsed``,
``check`` (image sanity statistics) and ``sampled`` (the sampled report, or null)).

- Deterministic: each sample's seed is ``derive_seed(seed, id)``; a model without
  ``seed_per_image = True`` is called one image at a time, so batching never changes outputs.
- Resumable: a finished sample (complete row + its four PNGs, same settings, same input and
  target pixels: ``data_sha256``) is skipped.
- Sharded: under torchrun rank r takes samples r::world and writes ``records.part-<r>.jsonl``;
  after a barrier rank 0 merges them into ``records.jsonl`` sorted by (task, id).
- Atomic: every file goes to a temp name and is renamed when complete.
- Text: the primary report is greedy (temperature 0 is forced on models that expose it);
  ``sampled`` adds a second one. A model with ``has_text = False`` (the baselines) gets null
  fields and
  ``"text": false`` (n/a in reports, not 0). A report describes the model's input image
  (what it sees, as in training), so each (task, id) row has its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from medq.baselines import bicubic
from medq.data.imageio import save_png, to_uint8
from medq.dist import barrier, current
from medq.harness.images import prepare
from medq.harness.load import check_protocol
from medq.harness.records import (
    KINDS,
    PART_GLOB,
    RECORDS,
    existing_rows,
    is_finished,
    merge,
    part_path,
    read_jsonl,
    write_jsonl_atomic,
)
from medq.harness.summary import summarize  # noqa: F401 - part of this module's API
from medq.harness.text import (
    InferError,
    call_per_image_seeds,
    decoding,
    generate_reports,
    supports_sampling,
    text_fields,
)
from medq.protocol import ImageTextModel
from medq.tasks import DEGRADATIONS, TASKS
from medq.verdict import image_checks

log = logging.getLogger(__name__)


def derive_seed(seed: int, sample_id: str) -> int:
    """A 31-bit seed from (run seed, sample id): independent of batch, shard and order."""
    digest = hashlib.sha256(f"{int(seed)}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def model_settings(model) -> dict:
    """What the model says about how it generates: ``model.settings`` (a dict), else its
    ``sample_cfg`` dataclass (steps, shift, guidance, temperature, ...), else nothing."""
    if isinstance(getattr(model, "settings", None), dict):
        return dict(model.settings)
    sc = getattr(model, "sample_cfg", None)
    if sc is not None and dataclasses.is_dataclass(sc):
        return {"sample": dataclasses.asdict(sc)}
    return {}


def data_fingerprint(item: dict) -> str:
    """sha256 (16 hex) of the 8-bit input and target: a finished row is reused only for the same
    pixels (not after a change of image size, data source or degradation)."""
    h = hashlib.sha256()
    for key in ("input", "target"):
        h.update(str(tuple(item[key].shape)).encode())
        h.update(to_uint8(item[key]).tobytes())
    return h.hexdigest()[:16]


def _shard(items, rank: int, world: int) -> Iterable[dict]:
    """Rank r's items r::world, loading only those when ``items`` is indexable."""
    if isinstance(items, Sequence) or (hasattr(items, "__len__") and hasattr(items, "__getitem__")):
        for i in range(rank, len(items), world):
            yield items[i]
    else:
        for i, item in enumerate(items):
            if i % world == rank:
                yield item


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _default_text_helpers(prompt, parse):
    """``medq.data.REPORT_PROMPT`` / ``parse_report`` unless given (tests pass their own)."""
    if prompt is None or parse is None:
        from medq import data
        prompt = data.REPORT_PROMPT if prompt is None else prompt
        parse = data.parse_report if parse is None else parse
    return prompt, parse


ITEM_KEYS = ("id", "task", "instruction", "input", "target", "mask")


def _check_item(item) -> None:
    """A data item as docs/ARCHITECTURE.md defines it; errors name the sample and the field."""
    if not isinstance(item, dict):
        raise InferError(
            f"data item is a {type(item).__name__}, expected a dict with {', '.join(ITEM_KEYS)}"
        )
    missing = [k for k in ITEM_KEYS if k not in item]
    if missing:
        raise InferError(f"data item {item.get('id', '?')!r}: missing {', '.join(missing)}")
    if item["task"] not in TASKS:
        raise InferError(
            f"data item {item['id']!r}: task {item['task']!r}, expected one of {', '.join(TASKS)}"
        )
    for key, channels in (("input", 3), ("target", 3), ("mask", 1)):
        t = item[key]
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != channels:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InferError(f"data item {item['id']!r}: {key} is {shape}, expected a tensor "
                             f"({channels}, h, w)")
    if item["mask"].shape[1:] != item["target"].shape[1:]:
        raise InferError(
            f"data item {item['id']!r}: mask {tuple(item['mask'].shape)} does not match "
            f"target {tuple(item['target'].shape)}"
        )


def _batches(items: Iterable[dict], batch_size: int) -> Iterable[list[dict]]:
    """Consecutive items, at most ``batch_size``, split where input/target sizes change."""
    batch: list[dict] = []
    for item in items:
        key = (tuple(item["input"].shape), tuple(item["target"].shape))
        if batch and (len(batch) == batch_size or key != (tuple(batch[0]["input"].shape),
                                                           tuple(batch[0]["target"].shape))):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


# Keyword options of the public entry point, each with a default; infer, bench, the demo and the
# tests name them at their call sites.
def run_harness(model: ImageTextModel, items, out_dir, *,  # noqa: PLR0913
                tasks: Sequence[str] | None = None, seed: int = 0, batch_size: int = 8,
                text: bool = True, sampled: dict | None = None, progress: bool = True,
                meta: dict | None = None, prompt: str | None = None,
                parse_report: Callable[[str], int | None] | None = None) -> dict[str, Path]:
    """Run ``model`` over ``items`` (restricted to ``tasks``) into ``out_dir``; returns
    {task: path of its records.jsonl}.

    ``text``: also generate reports (ignored, and recorded as n/a, when ``model.has_text`` is
    False). ``sampled``: ``{"temperature": T, "top_p": P}`` adds a sampled report per sample
    (models exposing ``temperature``/``top_p``; others log a warning and record null).
    ``meta``: ``run``, ``checkpoint``, ``weights`` written into every row (default: the model
    name, null, null). ``prompt`` / ``parse_report`` default to ``medq.data``'s."""
    check_protocol(model, type(model).__name__)
    if batch_size < 1:
        raise InferError(f"batch_size = {batch_size}: must be >= 1")
    out_dir = Path(out_dir)
    has_text = text and getattr(model, "has_text", True)
    if sampled is not None and has_text and not supports_sampling(model):
        log.warning("model %r has no temperature/top_p: no sampled reports", model.name)
        sampled = None
    sampled = sampled if has_text else None
    if has_text:
        prompt, parse_report = _default_text_helpers(prompt, parse_report)
    dist = current()
    run = _Run(model=model, out_dir=out_dir, seed=seed, has_text=has_text, sampled=sampled,
               prompt=prompt, parse=parse_report, rank=dist.rank,
               meta={"run": model.name, "checkpoint": None, "weights": None, **(meta or {})},
               settings=_jsonable({"model": model.name, **model_settings(model),
                                   "text": has_text, "sampled": sampled,
                                   "prompt": prompt if has_text else None}))
    wanted = set(tasks) if tasks else None
    bar = tqdm(desc=f"infer {model.name}", unit="img", disable=not progress or dist.rank != 0)
    try:
        for batch in _batches(run.pending(items, wanted, dist.world), batch_size):
            run.run_batch(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    barrier(dist)
    if dist.rank == 0:
        # Every task directory with part files, including tasks only other ranks saw.
        for d in sorted(p for p in out_dir.glob("*") if p.is_dir()):
            if any(d.glob(PART_GLOB)) or d.name in run.done:
                merge(d)
    barrier(dist)
    return {d.name: d / RECORDS for d in sorted(out_dir.glob("*"))
            if (d / RECORDS).is_file() and (wanted is None or d.name in wanted)}


@dataclasses.dataclass
class _Run:
    """One ``run_harness`` call on one rank: the settings every row records, the finished rows it
    may skip and the rows of this rank's part files."""

    model: ImageTextModel
    out_dir: Path
    seed: int
    has_text: bool
    sampled: dict | None
    prompt: str | None
    parse: Callable[[str], int | None] | None
    meta: dict
    settings: dict
    rank: int
    done: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)
    """task -> id -> finished row with these settings"""
    mine: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    """task -> rows of this rank's part file"""

    def task_dir(self, task: str) -> Path:
        return self.out_dir / task

    def _load_task(self, task: str) -> None:
        if task in self.done:
            return
        d, meta = self.task_dir(task), self.meta
        self.done[task] = {
            i: r for i, r in existing_rows(d).items()
            if r["settings"] == self.settings and r["seed"] == self.seed
            and all(r.get(k) == meta[k] for k in ("run", "checkpoint", "weights"))}
        self.mine[task] = [r for r in read_jsonl(part_path(d, self.rank)) if is_finished(r, d)]

    def pending(self, items, wanted: set[str] | None, world: int) -> Iterable[dict]:
        """This rank's items of the ``wanted`` tasks that have no finished row for these pixels."""
        seen: set[tuple[str, str]] = set()
        for item in _shard(items, self.rank, world):
            if wanted is not None and isinstance(item, dict) and item.get("task") not in wanted:
                continue
            _check_item(item)
            key = (item["task"], str(item["id"]))
            if key in seen:
                raise InferError(f"sample id {key[1]!r} appears twice for task {key[0]!r}; ids "
                                 f"name the PNG files and must be unique per task")
            seen.add(key)
            self._load_task(item["task"])
            row = self.done[item["task"]].get(key[1])
            if row is not None and row.get("data_sha256") == data_fingerprint(item):
                continue
            yield item

    def run_batch(self, batch: list[dict]) -> None:
        """Edit and describe ``batch``, write its PNGs and rows (the part files it touches)."""
        t0 = time.perf_counter()
        seeds = [derive_seed(self.seed, str(it["id"])) for it in batch]
        inputs = torch.stack([it["input"].float() for it in batch])
        outputs = self._edit(batch, inputs, seeds)
        greedy, samp = self._reports(inputs, seeds)
        seconds = (time.perf_counter() - t0) / len(batch)
        touched = set()
        for k, item in enumerate(batch):
            self.mine[item["task"]].append(
                self._row(item, outputs[k], seeds[k], seconds, greedy[k], samp[k]))
            touched.add(item["task"])
        for task in touched:
            write_jsonl_atomic(part_path(self.task_dir(task), self.rank), self.mine[task])

    def _edit(self, batch: list[dict], inputs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """The model's outputs (N, 3, H, W) on the CPU, at the targets' size."""
        model = self.model
        size = tuple(batch[0]["target"].shape[-2:])
        chunks = call_per_image_seeds(
            lambda im, ins, tk, s: model.edit(im, ins, tk, size, seed=s),
            model,
            inputs,
            seeds,
            [it["instruction"] for it in batch],
            [it["task"] for it in batch],
        )
        outputs = torch.cat([torch.as_tensor(c).detach().cpu() for c in chunks])
        if tuple(outputs.shape) != (len(batch), 3, *size):
            raise InferError(f"model {model.name!r}: edit returned shape "
                             f"{tuple(outputs.shape)}, expected {(len(batch), 3, *size)}")
        return outputs

    def _reports(self, inputs: torch.Tensor, seeds: list[int]) -> tuple[list, list]:
        """(greedy, sampled) reports of each input, None where there is none."""
        greedy, samp = [None] * len(seeds), [None] * len(seeds)
        if not self.has_text:
            return greedy, samp
        model, prompt = self.model, self.prompt
        # The report describes the image the model sees (its input), as in training.
        if supports_sampling(model):
            with decoding(model, temperature=0.0, top_p=1.0) as greedy_model:
                greedy = generate_reports(greedy_model, inputs, prompt, seeds)
        else:
            greedy = generate_reports(model, inputs, prompt, seeds)
        if self.sampled is not None:
            with decoding(model, **self.sampled) as sampling_model:
                samp = generate_reports(sampling_model, inputs, prompt, seeds)
        return greedy, samp

    def _row(self, item: dict, output: torch.Tensor, sample_seed: int, seconds: float, greedy,
             samp) -> dict:
        """Write the item's four PNGs; return its records row."""
        task, sid = item["task"], str(item["id"])
        d = self.task_dir(task)
        paths = {kind: f"images/{sid}_{kind}.png" for kind in KINDS}
        reference = bicubic(item["input"].float()[None], tuple(item["target"].shape[-2:]))[0]
        for kind, img in (("input", item["input"]), ("target", item["target"]),
                          ("mask", item["mask"]), ("output", output)):
            save_png(d / paths[kind], img)
        return {
            "id": sid,
            "task": task,
            "instruction": item["instruction"],
            **self.meta,
            "model": self.model.name,
            "seed": self.seed,
            "sample_seed": sample_seed,
            "settings": self.settings,
            **paths,
            "seconds": seconds,
            "data_sha256": data_fingerprint(item),
            "text": self.has_text,
            **text_fields(greedy, self.parse),
            "quality_label": int(item["quality"]) if item.get("quality") is not None else None,
            "check": image_checks(output, item["target"].float(), reference),
            "sampled": None
            if samp is None
            else {
                "text": samp.text,
                "ids": samp.ids,
                "undecodable": samp.n_bad,
                "undecodable_positions": samp.bad_positions,
                **self.sampled,
            },
        }


def default_instruction(task: str) -> str:
    """The first phrasing ``medq.data`` trains for an SR task; enhance needs the user to name the
    degradation (one of ``medq.data.text.INSTRUCTIONS``: blur, haze, illumination, noise)."""
    from medq.data import text

    if task in ("sr2", "sr4"):
        return text.instruction(task, 0)
    raise InferError(
        f"task {task!r}: give an instruction, e.g. one of "
        + "; ".join(repr(text.instruction(k, 0)) for k in DEGRADATIONS)
    )


# Keyword options with defaults, as run_harness's; the demo names them.
def edit_one(model: ImageTextModel, image: torch.Tensor, task: str, *,  # noqa: PLR0913
             size: int, instruction: str | None = None, seed: int = 0, report: bool = False,
             prompt: str | None = None, name: str = "image") -> dict:
    """One image of any size (3, h, w) in [0, 1] through ``model`` (for the demo).

    The image follows the any-size policy (``medq.harness.images.prepare``: field-of-view square
    resized to ``size``, or at its own size up to ``medq.data.readers.MAX_OWN_SIDE`` for 0; SR input
    = its bicubic downscale; enhance input = the image). ``instruction``
    defaults to ``default_instruction(task)``. Returns {"input", "output", "target", "mask"}
    (float32 CHW in [0, 1]), "seconds", "check" (image sanity statistics) and, with ``report``,
    "report": a ``DecodeResult`` of the report on the input (None for a model without text).
    Raises ValueError naming ``name`` for an image without a field of view."""
    check_protocol(model, type(model).__name__)
    prep = prepare(image, size, task, name=name)
    instruction = default_instruction(task) if instruction is None else instruction
    t0 = time.perf_counter()
    shape = tuple(prep["target"].shape[-2:])  # ``size``, or the photograph's own (size 0)
    out = model.edit(prep["input"][None], [instruction], [task], shape,
                     seed=[seed] if getattr(model, "seed_per_image", False) else seed)
    out = torch.as_tensor(out).detach().cpu()
    if tuple(out.shape) != (1, 3, *shape):
        raise InferError(f"model {model.name!r}: edit returned shape {tuple(out.shape)}, expected "
                         f"{(1, 3, *shape)}")
    result = {**{k: prep[k] for k in ("input", "target", "mask")},
              "output": torch.nan_to_num(out[0].float(), nan=0.0).clamp(0, 1),
              "instruction": instruction,
              "check": image_checks(out[0], prep["target"],
                                    bicubic(prep["input"][None], shape)[0])}
    if report:
        result["report"] = None
        if getattr(model, "has_text", True):
            prompt, _ = _default_text_helpers(prompt, (lambda t: None))
            result["report"] = generate_reports(model, prep["input"][None], prompt, [seed])[0]
    result["seconds"] = time.perf_counter() - t0
    return result
