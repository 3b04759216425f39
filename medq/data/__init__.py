"""Fundus data: the embedded procedural dataset, EyeQ / DRIVE / folder readers, FOV masks, SR and
editing pairs, report text, splits and collate. See docs/ARCHITECTURE.md ("Data items").

    from medq.data import build_dataset, collate
    ds = build_dataset(cfg.data, "train")
    batch = collate([ds[0], ds[1]])
"""

from medq.data.collate import collate
from medq.data.dataset import FundusDataset, build_dataset, real_images, synthetic_images
from medq.data.fov import crop_to_fov, fov_mask
from medq.data.imageio import DataError, load_rgb
from medq.data.split import split_ids
from medq.data.synthetic import generate_fundus
from medq.data.tasks import bicubic_resize, degrade, lanczos_resize
from medq.data.text import REPORT_PROMPT, parse_report, report, vocabulary

__all__ = ["collate", "FundusDataset", "build_dataset", "real_images", "synthetic_images",
           "crop_to_fov", "fov_mask", "DataError", "load_rgb", "split_ids", "generate_fundus",
           "bicubic_resize", "degrade", "lanczos_resize", "REPORT_PROMPT", "parse_report", "report",
           "vocabulary"]
