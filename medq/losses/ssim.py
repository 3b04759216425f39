"""SSIM (Wang et al. 2004) and MS-SSIM (Wang et al. 2003) as exact, maskable, fast loss functions.

Definition (agrees with ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` per channel, averaged over channels):

    mu_x = G * x,  s_xx = G * x^2 - mu_x^2,  s_xy = G * (x y) - mu_x mu_y       (G: Gaussian window)
    S    = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2))
    C1 = (k1 L)^2, C2 = (k2 L)^2, L = data_range

Border: 'valid' windows only. ``G *`` is a correlation with the normalised, separable
``window_size`` x ``window_size`` Gaussian (taps exp(-d^2 / 2 sigma^2), d = -r..r) without padding,
so the map is (H - window_size + 1, W - window_size + 1): exactly the region scikit-image keeps
after cropping its reflect-padded filter output. torchmetrics pads (reflect) and averages the
whole map instead, so it differs (about 1e-3..1e-2 on photographs).

Mask (field of view): a map pixel counts iff its whole window lies inside the mask, i.e. the mask
eroded by half a window (min-pool over the window support) on the valid grid. The image's SSIM is
the mean of the map over counted pixels. A mask with no counted pixel (all zero, or thinner than a
window) gives SSIM = 1 (loss 0) with an exactly zero gradient: nothing to compare, no penalty.
Mask values are thresholded at 0.5.

Precision: always float32 (float64 inputs stay float64) with autocast off (in half precision the
C2-sized denominator is wrong);
the result is cast back to the input dtype. The backward pass is hand-written: it reuses the
forward's per-pixel derivative maps (dS/dmu, dS/dE[x^2], dS/dE[xy]) and applies the adjoint of the
valid correlation (a 'full' correlation with the same symmetric taps), which saves time and memory
compared with autograd through five convolutions.

Speed (CPU, float32, at least ``COMPILE_MIN_ELEMENTS`` input elements): the map and its derivative
maps are computed by two ``torch.compile``d functions (inductor's C++ backend: each separable
filter pass becomes one fused, vectorised loop instead of 2 x window_size whole-tensor passes, and
the pointwise algebra fuses into the vertical pass). Eager PyTorch runs ~25 memory-bound ops per
pass, each an OpenMP region with a barrier; on a loaded machine every barrier waits for a
descheduled thread, which is why the eager kernel lost its lead under load. The first call in a
process compiles (~10-40 s; inductor caches the result on disk, later processes load it in a few
seconds). Without a working C++ compiler, or with ``MEDQ_SSIM_COMPILE=0``, the eager kernel below
runs instead (same numerics within float32 rounding).
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=16)
def gaussian_taps(window_size: int, sigma: float) -> tuple[float, ...]:
    """Normalised 1-D Gaussian taps of odd length ``window_size`` (scipy.ndimage's formula)."""
    r = window_size // 2
    w = [math.exp(-((k - r) ** 2) / (2.0 * sigma * sigma)) for k in range(window_size)]
    s = sum(w)
    return tuple(v / s for v in w)


def _correlate_valid(src: torch.Tensor, taps: tuple[float, ...], dim: int,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Valid 1-D correlation along ``dim`` (-1 or -2) as a sum of shifted slices.

    On CPU this beats a grouped conv2d by ~2x (it is memory-bound and needs no im2col)."""
    n = src.shape[dim] - len(taps) + 1
    out = torch.mul(src.narrow(dim, 0, n), taps[0], out=out)
    for k in range(1, len(taps)):
        out.add_(src.narrow(dim, k, n), alpha=taps[k])
    return out


def _correlate_adjoint(src: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """Adjoint of ``_correlate_valid``: a 'full' correlation (output longer by len(taps) - 1)."""
    shape = list(src.shape)
    shape[dim] += len(taps) - 1
    out = src.new_zeros(shape)
    n = src.shape[dim]
    for k, t in enumerate(taps):
        out.narrow(dim, k, n).add_(src, alpha=t)
    return out


def filter_valid(src: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable valid Gaussian filter over the last two dims: (..., H, W) ->
    (..., H-w+1, W-w+1)."""
    return _correlate_valid(_correlate_valid(src, taps, -1), taps, -2)


def filter_adjoint(src: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Adjoint of ``filter_valid``: (..., h, w) -> (..., h+w-1, w+w-1)."""
    return _correlate_adjoint(_correlate_adjoint(src, taps, -2), taps, -1)


BLOCK_ELEMENTS = 1 << 20
"""Image planes are processed in blocks of about this many pixels: the maps of a block stay
mostly in the CPU cache (the filter passes are memory-bound) and the forward's temporaries are
bounded by one block; blocks much smaller than this pay per-op overhead on a loaded machine."""


def _moments(x: torch.Tensor, y: torch.Tensor, taps) -> torch.Tensor:
    """Filtered x, y, x^2, y^2, xy: (P, H, W) x2 -> (5, P, h, w), in few large ops (one stack,
    2 x len(taps) slice passes): per-op overhead, not arithmetic, dominates on a loaded CPU."""
    stack = torch.stack((x, y, x, y, x))
    stack[2:4].mul_(stack[:2])
    stack[4].mul_(y)
    return filter_valid(stack, taps)


def _forward_block(x, y, wc, taps, c1, c2, need_x, need_y):
    """Planes x, y (P, H, W), map weights wc (P, h, w) or a float -> weighted S sums (P,) and the
    weighted per-pixel derivative maps (k, P, h, w): dS/dE[xy], dS/dE[x^2], dS/dmu_x, dS/dmu_y
    (the last two only when needed; None when no gradient is needed)."""
    mu_x, mu_y, exx, eyy, exy = _moments(x, y, taps)
    mxy = mu_x * mu_y
    a1 = mxy.mul(2).add_(c1)
    a2 = exy.sub_(mxy).mul_(2).add_(c2)
    del mxy
    mxx, myy = mu_x * mu_x, mu_y * mu_y
    b2 = exx.sub_(mxx).add_(eyy).sub_(myy).add_(c2)
    b1 = mxx.add_(myy).add_(c1)
    del myy, eyy
    inv_d = (b1 * b2).reciprocal_()
    s = a1 * a2 * inv_d
    value = (s * wc).sum(dim=(-2, -1))
    if not (need_x or need_y):
        return value, None
    # dS/dE[xy] = 2 A1 / D;  dS/dE[x^2] = dS/dE[y^2] = -S / B2;
    # dS/dmu_x = 2 mu_y (A2 - A1) / D + 2 mu_x S (1/B2 - 1/B1)   (x <-> y symmetric)
    diff = (a2 - a1).mul_(inv_d).mul_(2)
    d_exy = a1.mul_(2).mul_(inv_d)
    sb = s / b2
    d_exx = sb.neg()
    sb.sub_(s.div_(b1)).mul_(2)
    maps = [d_exy, d_exx]
    if need_x:
        maps.append(torch.addcmul(sb * mu_x, diff, mu_y))
    if need_y:
        maps.append(torch.addcmul(sb * mu_y, diff, mu_x))
    d = torch.stack(maps)
    return value, d.mul_(wc)


COMPILE_MIN_ELEMENTS = 1 << 16
"""Inputs with fewer elements (N*C*H*W) run the eager kernel: at that size a call costs well
under a millisecond either way and the one-off compile would dominate (tiny test configs)."""
_compile_state = {"failed": False}


def _correlate_sum(src: torch.Tensor, taps: tuple[float, ...], dim: int, n: int) -> torch.Tensor:
    """Valid 1-D correlation along ``dim`` to length ``n``, written out-of-place so that inductor
    fuses the len(taps) shifted reads into one loop (in-place ``add_`` would force buffers)."""
    out = src.narrow(dim, 0, n) * taps[0]
    for k in range(1, len(taps)):
        out = out + src.narrow(dim, k, n) * taps[k]
    return out


def _fused_forward(x, y, wc, taps: tuple[float, ...], c1: float, c2: float, need_x: bool,
                   need_y: bool):
    """The compile-friendly twin of ``_forward_block``: planes x, y (P, H, W), map weights
    wc (P, h, w) or a 0-dim tensor -> weighted S sums (P,) and the weighted derivative maps
    (k, P, h, w) in the same order (None when no gradient is needed). Pure, out-of-place."""
    k = len(taps)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1

    def filt(a):
        return _correlate_sum(_correlate_sum(a, taps, -1, w), taps, -2, h)

    mu_x, mu_y = filt(x), filt(y)
    exx, eyy, exy = filt(x * x), filt(y * y), filt(x * y)
    mxy, mxx, myy = mu_x * mu_y, mu_x * mu_x, mu_y * mu_y
    a1 = 2 * mxy + c1
    a2 = 2 * (exy - mxy) + c2
    b1 = mxx + myy + c1
    b2 = exx - mxx + eyy - myy + c2
    inv_d = 1 / (b1 * b2)
    s = a1 * a2 * inv_d
    value = (s * wc).sum(dim=(-2, -1))
    if not (need_x or need_y):
        return value, None
    diff = 2 * (a2 - a1) * inv_d  # see _forward_block for the derivative formulas
    sb = 2 * (s / b2 - s / b1)
    maps = [2 * a1 * inv_d, -s / b2]
    if need_x:
        maps.append(sb * mu_x + diff * mu_y)
    if need_y:
        maps.append(sb * mu_y + diff * mu_x)
    return value, torch.stack(maps) * wc


def _fused_backward(d, scale, x, y, taps: tuple[float, ...], need_x: bool, need_y: bool):
    """The compile-friendly twin of the eager backward: derivative maps d (k, P, h, w) scaled by
    the incoming gradient ``scale`` (P, 1, 1) -> input gradients (P, H, W) (None when not
    needed). The adjoint filter is a valid correlation of the zero-padded maps (symmetric taps)."""
    r = len(taps) - 1
    g = F.pad(d * scale, (r, r, r, r))
    g = _correlate_sum(_correlate_sum(g, taps, -1, x.shape[-1]), taps, -2, x.shape[-2])
    gx = g[2] + 2 * g[1] * x + g[0] * y if need_x else None
    gy = g[2 + need_x] + 2 * g[1] * y + g[0] * x if need_y else None
    return gx, gy


@functools.lru_cache(maxsize=1)
def _compiled():
    """(forward, backward) compiled once per process; dynamic shapes, so that new image sizes
    and block sizes reuse the same kernels instead of recompiling."""
    return (torch.compile(_fused_forward, dynamic=True, fullgraph=True),
            torch.compile(_fused_backward, dynamic=True, fullgraph=True))


def _use_compiled(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() >= COMPILE_MIN_ELEMENTS and not _compile_state["failed"]
            and os.environ.get("MEDQ_SSIM_COMPILE", "1") != "0")


def _call_compiled(which: int, *args):
    """Run compiled kernel ``which`` (0 forward, 1 backward); None if compiling failed (then
    warn once and never try again in this process: the caller runs the eager kernel)."""
    try:
        return _compiled()[which](*args)
    except Exception as e:  # noqa: BLE001 - any compiler failure means "use the eager kernel"
        _compile_state["failed"] = True
        warnings.warn(f"medq ssim: torch.compile failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); using the eager kernel. "
                      f"Set MEDQ_SSIM_COMPILE=0 to skip the attempt.", RuntimeWarning,
                      stacklevel=3)
        return None


def _blocks(p: int, h: int, w: int):
    step = max(1, BLOCK_ELEMENTS // (h * w))
    for a in range(0, p, step):
        yield a, min(a + step, p)


class _SSIM(torch.autograd.Function):
    """Per-image weighted SSIM: sum over channels and map of weight * S / C, shape (N,).
    ``weight``: a float (uniform) or (N, 1, h, w) map weights."""

    @staticmethod
    def forward(ctx, x, y, weight, taps, c1, c2):
        n, c, hh, ww = x.shape
        h, w = hh - len(taps) + 1, ww - len(taps) + 1
        xp, yp = x.view(n * c, hh, ww), y.view(n * c, hh, ww)
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        values = x.new_empty(n * c)
        d = None
        compiled = _use_compiled(x)
        blocks = list(_blocks(n * c, hh, ww))
        for a, b in blocks:
            if isinstance(weight, float):
                wc = weight / c
            else:
                image = torch.arange(a, b, device=x.device) // c
                wc = weight.view(n, h, w).index_select(0, image) / c
            out = None
            if compiled:  # a float weight would specialise (recompile) per value: pass a tensor
                wct = x.new_tensor(wc) if isinstance(wc, float) else wc
                out = _call_compiled(0, xp[a:b], yp[a:b], wct, taps, c1, c2, need_x, need_y)
                compiled = out is not None
            if out is None:
                out = _forward_block(xp[a:b], yp[a:b], wc, taps, c1, c2, need_x, need_y)
            values[a:b], db = out
            if db is not None and len(blocks) == 1:
                d = db  # no copy into a preallocated buffer: one pass less, one map set less
            elif db is not None:
                if d is None:
                    d = x.new_empty(2 + need_x + need_y, n * c, h, w)
                d[:, a:b] = db
        if d is not None:
            ctx.save_for_backward(x, y, d)
        ctx.taps = taps
        return values.view(n, c).sum(dim=1)

    @staticmethod
    def backward(ctx, grad):
        x, y, d = ctx.saved_tensors
        n, c, hh, ww = x.shape
        xp, yp = x.view(n * c, hh, ww), y.view(n * c, hh, ww)
        per_plane = grad.repeat_interleave(c).view(1, -1, 1, 1)
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        compiled = _use_compiled(x)
        blocks = list(_blocks(n * c, hh, ww))
        if compiled and len(blocks) == 1:  # the kernel's outputs are the gradients, no copy
            out = _call_compiled(1, d, per_plane[0], xp, yp, ctx.taps, need_x, need_y)
            if out is not None:
                return (None if out[0] is None else out[0].view_as(x),
                        None if out[1] is None else out[1].view_as(y), None, None, None, None)
            compiled = False
        gx = torch.empty_like(xp) if need_x else None
        gy = torch.empty_like(yp) if need_y else None
        for a, b in blocks:
            if compiled:
                out = _call_compiled(1, d[:, a:b], per_plane[0, a:b], xp[a:b], yp[a:b], ctx.taps,
                                     need_x, need_y)
                compiled = out is not None
                if compiled:
                    if need_x:
                        gx[a:b] = out[0]
                    if need_y:
                        gy[a:b] = out[1]
                    continue
            g = filter_adjoint(d[:, a:b] * per_plane[:, a:b], ctx.taps)
            if need_x:
                torch.addcmul(g[2], g[1], xp[a:b], value=2, out=gx[a:b]).addcmul_(g[0], yp[a:b])
            if need_y:
                torch.addcmul(g[2 + need_x], g[1], yp[a:b], value=2,
                              out=gy[a:b]).addcmul_(g[0], xp[a:b])
        return (None if gx is None else gx.view_as(x), None if gy is None else gy.view_as(y),
                None, None, None, None)


def _check(x: torch.Tensor, y: torch.Tensor, window_size: int, name: str) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"{name}: x and y must both be (N, C, H, W) of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"{name}: window_size = {window_size} must be odd and >= 1")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"{name}: images {tuple(x.shape[-2:])} are smaller than the window "
                         f"{window_size} (valid windows need H, W >= window_size)")


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given float64 (for gradcheck); never half precision."""
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()


def window_max(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Max over every ``window_size`` x ``window_size`` window (valid positions, stride 1):
    (N, C, H, W) -> (N, C, H - k + 1, W - k + 1). Equal to ``F.max_pool2d(x, k, stride=1)``; a
    square window is the product of a row and a column window, and two 1-D passes cost 2k
    comparisons per pixel instead of k^2 (the erosion of every scored mask runs through here)."""
    return F.max_pool2d(F.max_pool2d(x, (1, window_size), stride=1), (window_size, 1), stride=1)


def mask_weights(mask: torch.Tensor, window_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map weights of a field-of-view mask: (N, 1, H, W) -> weights (N, 1, h, w) summing to 1 per
    image (0 where the window leaves the mask) and a bool (N,) "no counted pixel"."""
    inside = 1.0 - window_max(1.0 - (mask > 0.5).to(mask.dtype), window_size)
    count = inside.sum(dim=(1, 2, 3))
    return inside / count.clamp_min(1.0).view(-1, 1, 1, 1), count == 0


# The constants of Wang et al.'s SSIM as keyword options with their defaults, as scikit-image and
# pytorch-msssim name them.
def ssim(x: torch.Tensor, y: torch.Tensor, *,  # noqa: PLR0913
         window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0, mask: torch.Tensor | None = None,
         reduction: str = "mean") -> torch.Tensor:
    """SSIM of images ``x``, ``y`` (N, C, H, W), values nominally in [0, data_range].

    Returns (N,) per-image SSIM in [-1, 1] for ``reduction="none"``, or its mean (0-dim) for
    ``"mean"``; dtype of ``x``. ``mask`` (N, 1, H, W) in {0, 1}: see the module docstring
    (window-inside-mask rule; an empty mask gives 1 with zero gradient). Differentiable in x and y.
    """
    _check(x, y, window_size, "ssim")
    if reduction not in ("mean", "none"):
        raise ValueError(f"ssim: reduction = {reduction!r}, expected 'mean' or 'none'")
    n, _, h, w = x.shape
    dtype = x.dtype
    with torch.autocast(x.device.type, enabled=False):
        xf, yf = _compute_dtype(x), _compute_dtype(y)
        if not torch.is_grad_enabled():  # metric use: skip the derivative maps
            xf, yf = xf.detach(), yf.detach()
        empty = None
        if mask is None:
            weight = 1.0 / ((h - window_size + 1) * (w - window_size + 1))
        else:
            if mask.shape != (n, 1, h, w):
                raise ValueError(f"ssim: mask must be (N, 1, H, W) = {(n, 1, h, w)}, got "
                                 f"{tuple(mask.shape)}")
            weight, empty = mask_weights(mask.detach().to(xf.dtype), window_size)
        taps = gaussian_taps(window_size, float(sigma))
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        value = _SSIM.apply(xf, yf, weight, taps, c1, c2)
        if empty is not None:
            value = value + empty.to(value.dtype)
    value = value.to(dtype)
    return value.mean() if reduction == "mean" else value


def ssim_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """``1 - ssim(x, y, **kwargs)``: in [0, 2], 0 for identical images. Same arguments/shapes."""
    return 1.0 - ssim(x, y, **kwargs)
