"""``build_dataset``: images of a source, cached, split, turned into task items.

Every image is loaded and validated when the dataset is built (never lazily in a DataLoader
worker); the prepared images are cached as one ``.npz`` per (source, files, seed, size, count)
under ``DataConfig.cache_dir``. With ``on_bad_input = "skip"`` bad files are left out and listed in
``<cache entry>/bad_inputs.jsonl`` and in ``dataset.bad_inputs``. The policy is part of a real
source's cache key: an ``error`` build never reuses the filtered list of a ``skip`` build.

Item ``i`` is image ``i // len(tasks)`` with task ``tasks[i % len(tasks)]`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medq.data import text
from medq.data.imageio import DataError
from medq.data.readers import prepare, read_drive, read_eyeq, read_folder
from medq.data.split import split_ids
from medq.data.synthetic import GENERATOR_VERSION, generate_fundus
from medq.data.tasks import bicubic_resize, degrade, enhance_spec, id_seed
from medq.files import atomic_path
from medq.tasks import SCALES, TASKS

log = logging.getLogger(__name__)
LESION_BITS = ("microaneurysms", "haemorrhages", "hard exudates", "new vessels")


def _atomic_savez(path: Path, **arrays) -> None:
    with atomic_path(path, suffix="" if path.suffix == ".npz" else ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


PARALLEL_MIN_IMAGES = 64
"""From this many images on, generation is spread over the machine's cores: each image depends
only on its seed, so the images are the same in any order or process."""


def generate_many(seeds: list[int], size: int) -> list:
    """``generate_fundus(seed, size)`` for every seed, in order (in worker processes for many)."""
    workers = min(len(os.sched_getaffinity(0)), 8)
    if workers < 2 or len(seeds) < PARALLEL_MIN_IMAGES:
        return [generate_fundus(s, size) for s in seeds]
    # fork: the workers run only numpy / PIL code that is already imported.
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(generate_fundus, seeds, [size] * len(seeds),
                             chunksize=max(1, len(seeds) // (4 * workers))))


def synthetic_images(seed: int, size: int, count: int, cache_dir: str | Path | None) -> dict:
    """{"ids", "images" uint8 (N, S, S, 3), "masks" bool (N, S, S), "quality", "dr", "lesions"
    int bitmask (N,)}, generated or read from
    ``cache_dir/synthetic-v{GENERATOR_VERSION}-s{seed}-{size}px-n{count}.npz``."""
    name = f"synthetic-v{GENERATOR_VERSION}-s{seed}-{size}px-n{count}.npz"
    path = Path(cache_dir) / name if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    fs = generate_many([id_seed("synthetic", seed, i) for i in range(count)], size)
    data = {
        "ids": np.array([f"syn{seed}_{i:05d}" for i in range(count)]),
        "images": np.stack([f.image for f in fs]),
        "masks": np.stack([f.mask for f in fs]),
        "quality": np.zeros(count, np.int64),
        "dr": np.array([f.dr_grade for f in fs], np.int64),
        "lesions": np.array(
            [sum(1 << LESION_BITS.index(x) for x in f.lesions) for f in fs], np.int64
        ),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_savez(path, **data)
    return data


def _stack_images(imgs: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    """{"images" (N, H, W, 3), "masks" (N, H, W)}; images of different sizes (a source at its own
    size) are zero-padded bottom/right to the largest and their sizes kept in "sizes" (N, 2)."""
    sizes = np.array([m.shape for m in masks], dtype=np.int64)
    if len({tuple(x) for x in sizes}) == 1:
        return {"images": np.stack(imgs), "masks": np.stack(masks)}
    H, W = sizes.max(axis=0)
    pad_i = np.zeros((len(imgs), H, W, 3), np.uint8)
    pad_m = np.zeros((len(imgs), H, W), bool)
    for k, (im, m) in enumerate(zip(imgs, masks)):
        pad_i[k, :im.shape[0], :im.shape[1]] = im
        pad_m[k, :m.shape[0], :m.shape[1]] = m
    return {"images": pad_i, "masks": pad_m, "sizes": sizes}


def real_images(cfg, size: int) -> tuple[dict, list[dict]]:
    """Prepared images of an eyeq / drive / folder source, filtered by ``cfg.target_quality``,
    plus the list of bad inputs ({"path", "reason"}); raises DataError in error mode."""
    if cfg.source == "eyeq":
        records, bad = read_eyeq(cfg.labels, cfg.root, cfg.target_quality)
        if bad and cfg.on_bad_input == "error":
            names = ", ".join(b["path"] for b in bad[:5])
            raise DataError(
                f"{cfg.labels}: {len(bad)} image(s) named in the CSV are missing under "
                f"{cfg.root}, e.g. {names} (data.on_bad_input=skip skips and lists them)"
            )
    else:
        records, bad = (
            (read_drive(cfg.root) if cfg.source == "drive" else read_folder(cfg.root)),
            [],
        )
    records = [r for r in records if r.quality in cfg.target_quality]
    # A mask file changed in place must rebuild the entry as an image changed in place does.
    stamp = [(r.id, str(r.path), r.path.stat().st_mtime_ns, str(r.mask_path),
              r.mask_path.stat().st_mtime_ns if r.mask_path else None) for r in records]
    # on_bad_input is in the key: a skip build's entry lists only the good files, which an error
    # build must not reuse (it would pass over the bad ones silently).
    key = hashlib.sha256(json.dumps([cfg.source, size, cfg.on_bad_input, stamp]).encode()
                         ).hexdigest()[:12]
    entry = Path(cfg.cache_dir) / f"{cfg.source}-{size}px-{cfg.on_bad_input}-{key}"
    cached = entry / "images.npz"
    if cached.is_file():
        with np.load(cached) as z:
            data = {k: z[k] for k in z.files}
        bad += (
            json.loads((entry / "bad_inputs.json").read_text())
            if (entry / "bad_inputs.json").is_file()
            else []
        )
        if bad and cfg.on_bad_input == "error":  # not written so; an entry from older code
            raise DataError(f"{entry}: cached with {len(bad)} bad input(s), e.g. {bad[0]['path']}: "
                            f"{bad[0]['reason']}")
    else:
        ok, imgs, masks = [], [], []
        for r in records:
            try:
                im, m = prepare(r, size)
            except DataError as e:
                if cfg.on_bad_input == "error":
                    raise
                bad.append({"path": str(r.path), "reason": str(e)})
                continue
            ok.append(r), imgs.append(im), masks.append(m)
        if not ok:
            raise DataError(f"{cfg.root}: no usable image (source {cfg.source}, target_quality "
                            f"{cfg.target_quality}; {len(bad)} bad input(s))")
        data = {
            "ids": np.array([r.id for r in ok]),
            **_stack_images(imgs, masks),
            "quality": np.array([r.quality for r in ok]),
            "dr": np.array([r.dr_grade for r in ok]),
            "lesions": np.full(len(ok), -1, np.int64),
        }
        entry.mkdir(parents=True, exist_ok=True)
        # The bad list first: images.npz is what marks the entry complete.
        (entry / "bad_inputs.json").write_text(
            json.dumps([b for b in bad if "named in" not in b["reason"]])
        )
        _atomic_savez(cached, **data)
    if bad:
        entry.mkdir(parents=True, exist_ok=True)
        with open(entry / "bad_inputs.jsonl", "w") as f:
            f.writelines(json.dumps(b) + "\n" for b in bad)
        log.warning("%d bad input(s) skipped, listed in %s", len(bad), entry / "bad_inputs.jsonl")
    return data, bad


def task_pair(target: torch.Tensor, mask: torch.Tensor, task: str, image_id: str, seed: int,
              quality: int) -> dict:
    """The model's side of one task on one working-size image: ``input`` (SR: the antialiased
    bicubic downscale of the whole image by the task's scale; enhance: a copy degraded by the
    kind and grade ``enhance_spec`` picks for the id), the ``instruction`` (phrasing picked by
    the id), the ``quality`` grade of that input and the ``scale``. Deterministic in (seed, id).

    target (3, H, W) float in [0, 1], mask (1, H, W) {0, 1}."""
    pick = id_seed("instruction", seed, image_id, task)
    H, W = target.shape[-2:]
    scale = SCALES[task]
    if scale > 1:
        inp = bicubic_resize(target[None], (max(1, H // scale), max(1, W // scale)))[0]
        return {"input": inp.contiguous(), "instruction": text.instruction(task, pick),
                "quality": quality, "scale": scale}
    kind, in_quality = enhance_spec(image_id, seed)
    inp = degrade(target, mask, kind, in_quality, id_seed("degrade", seed, image_id))
    return {"input": inp.contiguous(), "instruction": text.instruction(kind, pick),
            "quality": in_quality, "scale": 1}


class FundusDataset(Dataset):
    """Items as in docs/ARCHITECTURE.md; deterministic in (seed, index). ``labelled``: whether the
    source knows each image's quality and DR grade (synthetic, EyeQ); without labels (DRIVE, a
    folder) an item's ``report`` is None, never an invented grade."""

    def __init__(self, data: dict, tasks: list[str], seed: int, bad_inputs: list[dict],
                 labelled: bool = True):
        self.data, self.tasks, self.seed, self.bad_inputs = data, list(tasks), seed, bad_inputs
        self.labelled = labelled
        self.ids = [str(x) for x in data["ids"]]

    def __len__(self) -> int:
        return len(self.ids) * len(self.tasks)

    def image(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``k`` at its size: target (3, H, W) float in [0, 1], mask (1, H, W)."""
        img, m = self.data["images"][k], self.data["masks"][k]
        if "sizes" in self.data:  # images of their own sizes, padded to the largest
            h, w = (int(v) for v in self.data["sizes"][k])
            img, m = img[:h, :w], m[:h, :w]
        target = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
        return target, torch.from_numpy(m.astype(np.float32))[None]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k, task = divmod(index, len(self.tasks))
        task = self.tasks[task]
        image_id = self.ids[k]
        target, mask = self.image(k)
        quality, dr = int(self.data["quality"][k]), int(self.data["dr"][k])
        bits = int(self.data["lesions"][k])
        lesions = None if bits < 0 else [x for j, x in enumerate(LESION_BITS) if bits >> j & 1]
        pair = task_pair(target, mask, task, image_id, self.seed, quality)
        return {
            "id": image_id,
            "task": task,
            "instruction": pair["instruction"],
            "report": text.report(pair["quality"], dr, lesions) if self.labelled else None,
            "input": pair["input"],
            "target": target,
            "mask": mask,
            "quality": pair["quality"],
            "dr_grade": dr,
            "scale": pair["scale"],
        }


def _read_split_file(path: str | Path) -> dict[str, list[str]]:
    """{'train', 'val', 'test'} -> ids from a TOML split file; DataError naming the file."""
    import tomllib

    path = Path(path)
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: cannot read the split file ({e})") from None
    out = {}
    for split in ("train", "val", "test"):
        ids = d.get(split, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{path}: {split} must be a list of image ids (strings)")
        out[split] = ids
    seen: dict[str, str] = {}
    for split, ids in out.items():
        for i in ids:
            if i in seen:
                raise DataError(f"{path}: image {i!r} is in both {seen[i]} and {split}")
            seen[i] = split
    return out


def _select(data: dict, keep: set[str]) -> dict:
    idx = np.array([i for i, x in enumerate(data["ids"]) if str(x) in keep], dtype=np.int64)
    return {k: v[idx] for k, v in data.items()}


def _concat(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def build_dataset(data_cfg, split: str, *, tasks=None) -> FundusDataset:
    """Dataset of ``split`` ("train" | "val" | "test" | "all") for ``data_cfg``
    (``medq.config.DataConfig``) at its working size ``data_cfg.image_size``. ``tasks`` defaults to
    ``data_cfg.tasks``. Raises DataError.

    Synthetic: train and val split the ``seed`` set by ``val_fraction``; test is the separate
    ``test_seed`` set (``num_test_images``). Real sources: ``split_file``'s id lists when given,
    else hashed fractions (``medq.data.split``)."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split {split!r}: expected train, val, test or all")
    tasks = list(tasks or data_cfg.tasks)
    bad_tasks = [t for t in tasks if t not in TASKS]
    if bad_tasks:
        raise ValueError(f"tasks {bad_tasks}: expected {', '.join(TASKS)}")
    size = data_cfg.image_size
    if data_cfg.source == "synthetic":
        main = synthetic_images(data_cfg.seed, size, data_cfg.num_images, data_cfg.cache_dir)
        test = synthetic_images(data_cfg.test_seed, size, data_cfg.num_test_images,
                                data_cfg.cache_dir)
        if split == "test":
            data = test
        else:
            parts = split_ids([str(x) for x in main["ids"]], data_cfg.val_fraction, 0.0)
            data = (_concat(main, test) if split == "all"
                    else _select(main, set(parts[split])))
        return FundusDataset(data, tasks, data_cfg.seed, [])
    data, bad = real_images(data_cfg, size)
    if split != "all":
        ids = [str(x) for x in data["ids"]]
        if data_cfg.split_file:
            lists = _read_split_file(data_cfg.split_file)
            unknown = sorted(set(lists[split]) - set(ids))
            if unknown:
                log.warning("%s: %d %s id(s) not under %s, e.g. %s", data_cfg.split_file,
                            len(unknown), split, data_cfg.root, unknown[0])
            keep = set(lists[split])
        else:
            keep = set(split_ids(ids, data_cfg.val_fraction, data_cfg.test_fraction)[split])
        data = _select(data, keep)
        if len(data["ids"]) == 0:
            raise DataError(f"{data_cfg.root}: no image in the {split} split"
                            + (f" of {data_cfg.split_file}" if data_cfg.split_file else ""))
    return FundusDataset(data, tasks, data_cfg.seed, bad, labelled=data_cfg.source == "eyeq")
