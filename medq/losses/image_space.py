"""The image-space objective shared by the pixel (L1/L2) and SSIM losses.

    x0_hat = x_t - t * v_hat                 (BAGEL rectified flow: t = 0 clean, t = 1 noise)
    keep samples with t <= max_t             (x0_hat is only trustworthy near the data)
    [SSIM: scale_gradient, clamp_gradient at x0_hat]
    decode in chunks of K samples -> crop each to its true size -> compare with the target

Reduction: the mean of the per-sample losses over the kept samples. A gated-out sample is never
decoded, contributes nothing and receives exactly zero gradient. When no sample is kept the result
is an exact zero connected to ``x0_hat`` (a sum over an empty slice: finite even if x0_hat is not),
so ``backward`` works and gives zero gradients.

Memory: each chunk (decode + crop + loss) runs under non-reentrant activation checkpointing, so the
forward keeps only the chunk's latents and its per-sample losses; the backward recomputes one
chunk at a time. Peak memory is therefore bounded by the chunk size K, not by the batch, at the cost
of one extra decode forward per chunk. (Decoding and back-propagating chunk by chunk inside the
loss would bound memory too, but cannot return a loss tensor that the caller's single ``backward``
and the gradient probe can use.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from medq.losses.grad import clamp_gradient, scale_gradient
from medq.losses.ssim import ssim, ssim_loss

Decode = Callable[[torch.Tensor], torch.Tensor]
"""VAE decoder: latents (K, C, h, w) -> images (K, 3, H, W) in [0, 1]."""

KINDS = ("l1", "l2", "ssim")


def _sample_loss(img, tgt, msk, kind, ssim_kwargs) -> torch.Tensor:
    """One sample, already cropped: img, tgt (1, 3, h, w), msk (1, 1, h, w) or None -> 0-dim."""
    if kind == "ssim":
        return ssim_loss(img, tgt, mask=msk, **ssim_kwargs)
    diff = (img.float() - tgt.float())
    diff = diff.abs() if kind == "l1" else diff.square()
    if msk is None:
        return diff.mean()
    m = (msk > 0.5).to(diff.dtype)
    return (diff * m).sum() / (m.sum() * diff.shape[1]).clamp_min(1.0)


def _batch_losses(img, tgt, msk, kind, ssim_kwargs) -> torch.Tensor:
    """``_sample_loss`` of every sample of a batch at once: img, tgt (K, 3, h, w), msk (K, 1, h, w)
    or None -> (K,). One SSIM call on the batch instead of K: at 64 px a single image is below
    ``medq.losses.ssim``'s compile threshold, and K eager calls cost ~100 ms per training step."""
    if kind == "ssim":
        return 1.0 - ssim(img, tgt, mask=msk, reduction="none", **ssim_kwargs)
    diff = (img.float() - tgt.float())
    diff = diff.abs() if kind == "l1" else diff.square()
    if msk is None:
        return diff.mean(dim=(1, 2, 3))
    m = (msk > 0.5).to(diff.dtype)
    return (diff * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * diff.shape[1]).clamp_min(1.0)


def _chunk_losses(latents, target, mask, sizes, decode, kind, ssim_kwargs, offset=None
                  ) -> torch.Tensor:
    """Decode one chunk (plus its ``offset``) and return its per-sample losses (K,), each on the
    cropped image."""
    images = decode(latents)
    if images.dim() != 4 or images.shape[0] != latents.shape[0]:
        raise ValueError(f"decode returned {tuple(images.shape)} for latents "
                         f"{tuple(latents.shape)}; expected (K, 3, H, W)")
    if offset is not None:
        images = images[..., :offset.shape[-2], :offset.shape[-1]] + offset
    full = (images.shape[-2:] == target.shape[-2:]
            and bool((sizes == torch.tensor(list(images.shape[-2:]))).all()))
    if full:  # nothing to crop (no padding in this chunk): one batched call
        return _batch_losses(images, target, mask, kind, ssim_kwargs)
    out = []
    for i in range(images.shape[0]):
        h, w = int(sizes[i, 0]), int(sizes[i, 1])
        if (
            h > images.shape[-2]
            or w > images.shape[-1]
            or h > target.shape[-2]
            or w > target.shape[-1]
        ):
            raise ValueError(f"target_size ({h}, {w}) exceeds the decoded image "
                             f"{tuple(images.shape[-2:])} or the target {tuple(target.shape[-2:])}")
        msk = None if mask is None else mask[i:i + 1, :, :h, :w]
        out.append(_sample_loss(images[i:i + 1, :, :h, :w], target[i:i + 1, :, :h, :w], msk, kind,
                                ssim_kwargs))
    return torch.stack(out)


@dataclass(frozen=True)
class ImageTerm:
    """What one image-space term compares and how its gradient is shaped.

    ``kind``: l1 | l2 (mean over the cropped pixels; inside the mask if given) | ssim (1 - SSIM,
    inside the mask if given, see ``medq.losses.ssim``, with ``ssim_window`` / ``ssim_sigma``).
    ``max_t``: only samples with t <= max_t count. ``chunk``: samples decoded at once (see the
    module docstring). ``grad_scale`` and ``grad_clamp`` (0 = off) shape the gradient at x0_hat
    (any kind; the composer uses them for SSIM only)."""

    kind: str
    max_t: float
    chunk: int = 8
    grad_scale: float = 1.0
    grad_clamp: float = 0.0
    ssim_window: int = 11
    ssim_sigma: float = 1.5


def image_space_loss_from_x0(x0_hat: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                             decode: Decode, term: ImageTerm, *,
                             target_size: torch.Tensor | None = None,
                             mask: torch.Tensor | None = None,
                             offset: torch.Tensor | None = None) -> torch.Tensor:
    """Image-space loss ``term`` of predicted clean latents ``x0_hat`` (N, C, h, w) at timesteps
    ``t`` (N,) against ``target`` (N, 3, H, W) in [0, 1]; returns a 0-dim float32 loss. The image
    compared is ``decode(x0_hat) + offset`` (``offset`` (N, 3, H, W), no gradient: the
    pixel-residual rendering, ``medq.models.forward.render_offset``), or ``decode(x0_hat)``
    without one.

    ``target_size`` (N, 2) LongTensor (h, w): true image sizes (images are padded bottom/right);
    None = the full target. ``mask`` (N, 1, H, W): the field of view the term is computed inside.
    """
    kind, max_t, chunk = term.kind, term.max_t, term.chunk
    if kind not in KINDS:
        raise ValueError(f"image_space_loss: kind = {kind!r}, expected one of {KINDS}")
    if chunk < 1:
        raise ValueError(f"image_space_loss: chunk = {chunk} must be >= 1")
    n = x0_hat.shape[0]
    if t.shape != (n,) or target.shape[0] != n:
        raise ValueError(f"image_space_loss: t {tuple(t.shape)} and target {tuple(target.shape)} "
                         f"must have N = {n} (x0_hat {tuple(x0_hat.shape)})")
    if mask is not None and mask.shape != (n, 1, *target.shape[-2:]):
        raise ValueError(f"image_space_loss: mask {tuple(mask.shape)} must be "
                         f"{(n, 1, *target.shape[-2:])}")
    if target_size is None:
        target_size = torch.tensor([list(target.shape[-2:])] * n)
    target_size = target_size.to("cpu")
    keep = torch.nonzero(t.detach() <= max_t).flatten()
    if keep.numel() == 0:
        return x0_hat[:0].sum().float()
    if term.grad_scale != 1.0:
        x0_hat = scale_gradient(x0_hat, term.grad_scale)
    if term.grad_clamp > 0:
        x0_hat = clamp_gradient(x0_hat, term.grad_clamp)
    kept = x0_hat.index_select(0, keep.to(x0_hat.device))
    ssim_kwargs = {"window_size": term.ssim_window, "sigma": term.ssim_sigma}
    losses = []
    for start in range(0, keep.numel(), chunk):
        idx = keep[start:start + chunk]
        tgt = target.index_select(0, idx.to(target.device))
        msk = None if mask is None else mask.index_select(0, idx.to(mask.device))
        off = None if offset is None else offset.index_select(0, idx.to(offset.device))
        args = (kept[start:start + chunk], tgt, msk, target_size[idx], decode, kind, ssim_kwargs,
                off)
        if torch.is_grad_enabled():
            losses.append(checkpoint(_chunk_losses, *args, use_reentrant=False))
        else:
            losses.append(_chunk_losses(*args))
    return torch.cat(losses).float().mean()


def unpatchify(tokens: torch.Tensor, shapes: Sequence[tuple[int, int]], patch_size: int
               ) -> torch.Tensor:
    """BAGEL packed latent tokens (L, p*p*C) -> latents (N, C, max_h*p, max_w*p), zero padded
    bottom/right. Token features are ordered (p_row, p_col, C) and tokens row-major per image, as
    BAGEL's ``einsum("chpwq->hwpqc")`` patchify."""
    p = patch_size
    if tokens.dim() != 2 or tokens.shape[1] % (p * p):
        raise ValueError(
            f"unpatchify: tokens {tuple(tokens.shape)} must be (L, p*p*C) with p = {p}"
        )
    c = tokens.shape[1] // (p * p)
    total = sum(h * w for h, w in shapes)
    if total != tokens.shape[0]:
        raise ValueError(f"unpatchify: shapes {list(shapes)} hold {total} tokens, got "
                         f"{tokens.shape[0]}")
    hmax, wmax = max(h for h, _ in shapes), max(w for _, w in shapes)
    out = []
    for img, (h, w) in zip(torch.split(tokens, [h * w for h, w in shapes]), shapes):
        lat = torch.einsum("hwpqc->chpwq", img.reshape(h, w, p, p, c)).reshape(c, h * p, w * p)
        out.append(F.pad(lat, (0, (wmax - w) * p, 0, (hmax - h) * p)))
    return torch.stack(out)


def image_space_loss_packed(packed_v_hat: torch.Tensor, packed_x_t: torch.Tensor,
                            packed_t: torch.Tensor, shapes: Sequence[tuple[int, int]],
                            patch_size: int, target: torch.Tensor, decode: Decode,
                            term: ImageTerm, **kwargs) -> torch.Tensor:
    """Packed entry for a BAGEL-style trainer: ``packed_v_hat``, ``packed_x_t`` (L, p*p*C) latent
    tokens of all images, ``packed_t`` (L,) one timestep per token (constant within an image),
    ``shapes`` [(h_patches, w_patches), ...] per image, ``patch_size`` p. Same result as
    ``image_space_loss_from_x0`` on x0_hat = x_t - t v_hat of the unpatchified latents (zero
    padded bottom/right to the largest).
    Other arguments as ``image_space_loss_from_x0``."""
    if packed_v_hat.shape != packed_x_t.shape or packed_t.shape != packed_v_hat.shape[:1]:
        raise ValueError(f"image_space_loss_packed: v_hat {tuple(packed_v_hat.shape)}, x_t "
                         f"{tuple(packed_x_t.shape)}, t {tuple(packed_t.shape)}: expected "
                         f"(L, p*p*C), (L, p*p*C), (L,)")
    x0_tokens = packed_x_t - packed_t.to(packed_x_t.dtype).unsqueeze(1) * packed_v_hat
    t_img = []
    for i, seg in enumerate(torch.split(packed_t.detach(), [h * w for h, w in shapes])):
        if seg.numel() == 0 or bool(seg.max() != seg.min()):
            raise ValueError(f"image_space_loss_packed: image {i} (shape {shapes[i]}) has "
                             f"timesteps in [{seg.min() if seg.numel() else None}, "
                             f"{seg.max() if seg.numel() else None}]; expected one constant t")
        t_img.append(seg[0])
    x0_hat = unpatchify(x0_tokens, shapes, patch_size)
    return image_space_loss_from_x0(x0_hat, torch.stack(t_img), target, decode, term, **kwargs)
