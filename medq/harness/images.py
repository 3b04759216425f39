"""The any-size preprocessing policy (image files are read and written by ``medq.data.imageio``).

Policy for images of any size (used by ``edit_one`` and stated in ``python -m infer --help``): an
image is cropped to the square around its field of view (the bright disc found by
``medq.data.fov``; black outside it, padded with black where the disc leaves the frame) and
resized to the working size ``cfg.data.image_size``. For SR the target is that resized
image and the input its bicubic downscale by 2 or 4; for ``enhance`` (one image, no clean
reference) the input is the resized image itself. Datasets from ``medq.data.build_dataset``
prepare files the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from medq.data.imageio import to_uint8
from medq.tasks import SCALES, check_task


def prepare(image: torch.Tensor, size: int, task: str, *, name: str = "image") -> dict:
    """Apply the any-size policy to one image (3, h, w) in [0, 1], as ``medq.data`` does for files:
    field of view detected (``medq.data.fov``), the FOV square cropped (black outside the disc),
    resized to ``size`` (PIL bicubic). Returns ``target`` (3, size, size), ``mask`` (1, size,
    size), ``input`` (SR: the target's bicubic downscale by ``scale``; enhance: the image itself)
    and ``scale``. Raises ValueError naming ``name`` when the image has no field of view."""
    from medq.data import bicubic_resize
    from medq.data.fov import require_fov
    from medq.data.readers import fov_square

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{name}: expected an RGB image (3, h, w), got shape {tuple(image.shape)}")
    scale = SCALES[check_task(task)]
    if size % scale:
        raise ValueError(f"working size {size} is not divisible by the {task} scale {scale}")
    arr = to_uint8(image)
    out, m = fov_square(arr, require_fov(arr, name), size, name=name)
    target = torch.from_numpy(out.copy()).permute(2, 0, 1).float() / 255
    mask = torch.from_numpy(m.astype(np.float32))[None]
    side = target.shape[-1]  # ``size``, or the FOV square's own side (a multiple of 4) for 0
    inp = target.clone() if scale == 1 else bicubic_resize(target[None], side // scale)[0]
    return {"input": inp, "target": target, "mask": mask, "scale": scale}
