"""Real-data sources: EyeQ (label CSV + image folder), DRIVE (images + FOV masks), any folder.

Each reader returns ``Record``s; ``prepare`` loads one record the way EyeQ's ``fundus_prep.py``
does (find the FOV circle, black out the rest, crop the square, pad, resize), validating it.
Missing or unreadable files raise ``DataError`` naming them; the caller decides (error or skip).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medq.data.fov import NoFieldOfView, crop_to_fov, require_fov
from medq.data.imageio import IMAGE_SUFFIXES, DataError, load_mask, load_rgb

log = logging.getLogger(__name__)
EYEQ_COLUMNS = ("image", "quality", "DR_grade")


@dataclass(frozen=True)
class Record:
    id: str
    path: Path
    mask_path: Path | None
    quality: int
    dr_grade: int


def _int_field(row: dict, key: str, allowed, where: str) -> int:
    raw = (row.get(key) or "").strip()
    try:
        value = int(float(raw))
        if float(raw) != value:
            raise ValueError
    except (ValueError, OverflowError):  # OverflowError: inf
        raise DataError(
            f"{where}: {key} = {raw!r} is not an integer; expected one of {list(allowed)}"
        ) from None
    if value not in allowed:
        raise DataError(f"{where}: {key} = {value} is not one of {list(allowed)}")
    return value


def _utf8_text(path: Path) -> io.StringIO:
    """A label CSV's text (UTF-8, a leading BOM dropped, line ends as written); a ``DataError``
    naming the file when it is not UTF-8."""
    try:
        return io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); save the "
                        f"label CSV as UTF-8") from None


def read_eyeq(
    labels: str | Path, root: str | Path, qualities=(0, 1, 2)
) -> tuple[list[Record], list[dict]]:
    """(records whose file exists, missing: [{"path", "reason"}]) from an EyeQ label CSV, keeping
    the rows whose quality is in ``qualities`` (files of other rows are not looked for).

    Bad CSV content (missing column, unknown quality / DR value, duplicate image) raises
    ``DataError`` naming the file, the row and the value: it is never skipped."""
    labels, root = Path(labels), Path(root)
    if not labels.is_file():
        raise DataError(f"{labels}: EyeQ label CSV not found")
    with _utf8_text(labels) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing_cols = [c for c in EYEQ_COLUMNS if c not in header]
        if missing_cols:
            raise DataError(
                f"{labels}: missing column(s) {', '.join(missing_cols)}; expected a header "
                f"',image,quality,DR_grade', got {','.join(header)!r}"
            )
        records, missing, seen = [], [], {}
        for lineno, row in enumerate(reader, start=2):
            where = f"{labels}, line {lineno}"
            name = (row["image"] or "").strip()
            if not name:
                raise DataError(f"{where}: empty image name")
            if name in seen:
                raise DataError(f"{where}: duplicate image {name!r} (first on line {seen[name]})")
            seen[name] = lineno
            q = _int_field(row, "quality", (0, 1, 2), where)
            g = _int_field(row, "DR_grade", range(5), where)
            path = root / name
            if q not in qualities:
                continue
            if not path.is_file():
                missing.append(
                    {
                        "path": str(path),
                        "reason": f"named in {labels} line {lineno} but not on disk",
                    }
                )
                continue
            records.append(Record(Path(name).stem, path, None, q, g))
    return records, missing


def _mask_for(image: Path, mask_dirs: list[Path]) -> Path | None:
    for d in mask_dirs:
        for cand in sorted(d.glob(f"{image.stem}_mask.*")) + sorted(d.glob(f"{image.stem}.*")):
            if cand != image and cand.suffix.lower() in IMAGE_SUFFIXES:
                return cand
    return None


def read_folder(root: str | Path) -> list[Record]:
    """Every image under ``root`` (recursively), except masks; a mask is a file named
    ``<stem>_mask.*`` next to the image or in a ``mask``/``masks`` folder beside its folder
    (DRIVE: ``images/21_training.tif`` + ``mask/21_training_mask.gif``). Quality and DR grade are
    unknown for these sources and recorded as 0 (Good, no DR)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = [
        p
        for p in files
        if "mask" not in p.stem.lower() and p.parent.name.lower() not in ("mask", "masks")
    ]
    records, seen = [], {}
    for p in images:
        rel = p.relative_to(root)
        rid = p.stem if p.stem not in seen else str(rel.with_suffix("")).replace("/", "_")
        if rid in seen:
            raise DataError(f"{p}: duplicate image id {rid!r} (also {seen[rid]})")
        seen[rid] = p
        mask_dirs = [p.parent, p.parent.parent / "mask", p.parent.parent / "masks"]
        records.append(Record(rid, p, _mask_for(p, [d for d in mask_dirs if d.is_dir()]), 0, 0))
    if not records:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return records


def read_drive(root: str | Path) -> list[Record]:
    """DRIVE layout: ``root/images/*.tif`` with ``root/mask/<stem>_mask.gif``; every image must have
    its mask."""
    root = Path(root)
    records = read_folder(root / "images" if (root / "images").is_dir() else root)
    no_mask = [str(r.path) for r in records if r.mask_path is None]
    if no_mask:
        raise DataError(
            f"{root}: DRIVE images without a mask/<name>_mask.gif: {', '.join(no_mask[:5])}"
        )
    return records


MAX_OWN_SIDE = 1024
"""Largest side kept at a photograph's own size (``data.image_size = 0``): a larger field of view
is downscaled to it (with a warning naming the photograph), since generating a 4000-px image tile
by tile would take hours on a CPU, and a clinician reads a fundus at this size."""


def fov_square(image: np.ndarray, mask: np.ndarray, size: int, name: str = "image"
               ) -> tuple[np.ndarray, np.ndarray]:
    """The any-size policy, one home for files and uploads alike: crop the square around the field
    of view (``crop_to_fov``: black outside the disc, black padding where the disc leaves the
    frame) and resize it to ``size`` (PIL bicubic for the image, bilinear then >= 0.5 for the
    mask); ``size`` 0 keeps the square's own side (at most ``MAX_OWN_SIDE``, downscaled beyond
    with a warning naming ``name``), padded with black to a multiple of 4 so that the x2 and x4
    inputs are whole pixels.

    image uint8 (H, W, 3), mask bool (H, W) -> uint8 (S, S, 3), zero outside the mask, and bool
    (S, S)."""
    sq, sq_m = crop_to_fov(image, mask)
    if size == 0 and sq.shape[0] > MAX_OWN_SIDE:
        log.warning("%s: its field of view is %d px across, downscaled to %d px (the largest own "
                    "size handled)", name, sq.shape[0], MAX_OWN_SIDE)
        size = MAX_OWN_SIDE
    if size == 0:
        pad = -sq.shape[0] % 4
        sq = np.pad(sq, ((0, pad), (0, pad), (0, 0)))
        sq_m = np.pad(sq_m, ((0, pad), (0, pad)))
        return sq * sq_m[:, :, None], sq_m
    out = np.asarray(Image.fromarray(sq).resize((size, size), Image.BICUBIC, reducing_gap=2.0))
    m = (
        np.asarray(
            Image.fromarray(sq_m.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
        )
        >= 128
    )
    return out * m[:, :, None], m


def prepare(rec: Record, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Load, find the FOV (dataset mask or detected), crop the FOV square, resize to ``size`` (0 =
    its own size): ``fov_square``. -> uint8 (S, S, 3), bool (S, S). Raises DataError naming the
    file."""
    img = load_rgb(rec.path, max_side=max(4 * size, 512) if size else 2 * MAX_OWN_SIDE)
    if rec.mask_path is not None:
        mask = load_mask(rec.mask_path, img.shape[:2])
        if mask.sum() < 0.02 * mask.size:
            raise DataError(f"{rec.mask_path}: mask of {rec.path} is empty")
    else:
        try:
            mask = require_fov(img, str(rec.path))
        except NoFieldOfView as e:
            raise DataError(str(e)) from None
    return fov_square(img, mask, size, name=str(rec.path))
