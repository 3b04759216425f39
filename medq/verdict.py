"""Healthy or collapsed: the per-checkpoint verdict, with the reasons.

    v = verdict(undecodable_rate=0.21, output_std_ratio=0.02, psnr_gap_db=-14.0, nonfinite_frac=0.0)
    v.status          # 'collapsed'
    v.reasons         # ['undecodable-token rate 0.21 > 0.01 ...', 'outputs near-constant ...', ...]
    v.checks          # every check: value, threshold, ok (None = not measured)

Each input may be ``None`` (not measured: e.g. a baseline has no text, ``score-text`` has no
images); a check that was not measured neither passes nor fails. With nothing measured the status
is ``unknown``. The failure modes are those of the original runs (docs/BACKGROUND.md, the failure
table): v2's
model sampled padding ids (``TypeError: ... NoneType found``) and produced garbage images.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch

# A trained model's text head never targets the padding rows, so its greedy and sampled reports
# contain essentially none; an untrained head spreads mass uniformly, so the padding share of the
# vocabulary (e.g. 27 of 128 rows) shows up as a rate of ~0.2. 1 % separates the two by 20x.
UNDECODABLE_RATE_MAX = 0.01

# Median of output std / target std per image. A fundus photograph has std ~0.2; an output whose
# std is below a tenth of its target's is flat (the grey or black images of a collapsed decoder).
OUTPUT_STD_RATIO_MIN = 0.1

# Median over images of PSNR(output) - PSNR(bicubic for SR, identity for enhance), in dB. A weak but
# working model sits within a few dB of bicubic; -8 dB is 6.3x bicubic's MSE, which noise-like or
# wrong-colour outputs reach (random weights: ~ -15 dB) and an undertrained model does not.
PSNR_GAP_MIN_DB = -8.0

# Median over images of SSIM(output) / SSIM(reference), both against the target. Structure is what a
# garbage image lacks even where its colours keep the PSNR close (v2-as-run on enhance: PSNR 4 dB
# under identity, SSIM ratio 0.35). Healthy fine-tunes of the CPU model sit at 0.8-0.9.
SSIM_RATIO_MIN = 0.5

# Any non-finite output value: NaN/Inf never come out of a sane sampler.
NONFINITE_FRAC_MAX = 0.0

# Mean over images i of SSIM(output_i, target_i) - mean over j != i of SSIM(output_i, target_j),
# inside the eroded FOV. An output that ignores its input scores exactly 0 (the constant image; see
# input_dependence for why a mean and not a median); bicubic x4 scores about 0.19, bicubic x2
# 0.35, the unchanged enhance input 0.44. 0.02 leaves room for a weak model that still reads its
# input, and little for one that does not.
INPUT_DEPENDENCE_MIN = 0.02


@dataclass
class Verdict:
    status: str
    """healthy | collapsed | unknown (nothing measured)."""
    reasons: list[str] = field(default_factory=list)
    """One line per failed check (empty when healthy)."""
    checks: dict[str, dict] = field(default_factory=dict)
    """name -> {"value", "threshold", "ok"}; ok is None when not measured."""

    def as_dict(self) -> dict:
        return asdict(self)


def verdict(*, undecodable_rate: float | None = None, output_std_ratio: float | None = None,
            psnr_gap_db: float | None = None, ssim_ratio: float | None = None,
            nonfinite_frac: float | None = None, input_dependence: float | None = None) -> Verdict:
    """Combine the collapse signals of one checkpoint into a ``Verdict``.

    - ``undecodable_rate``: undecodable ids / generated ids (``medq.textcheck.TextStats``).
    - ``output_std_ratio``: median over images of std(output) / std(target).
    - ``psnr_gap_db``: median over images of PSNR(output) - PSNR(reference upsampler).
    - ``ssim_ratio``: median over images of SSIM(output) / SSIM(reference), against the target.
    - ``nonfinite_frac``: fraction of output values that are NaN or Inf (before clamping).
    - ``input_dependence``: ``input_dependence(...)``, how much better an output matches its own
      target than the other images' targets (~0 for a model that ignores its input)."""
    specs = [
        ("undecodable_rate", undecodable_rate, UNDECODABLE_RATE_MAX, lambda v, t: v <= t,
         "undecodable-token rate {v:.4g} > {t:g}: the model emits ids the tokenizer cannot decode"),
        ("output_std_ratio", output_std_ratio, OUTPUT_STD_RATIO_MIN, lambda v, t: v >= t,
         "outputs near-constant: median std(output)/std(target) {v:.3g} < {t:g}"),
        ("psnr_gap_db", psnr_gap_db, PSNR_GAP_MIN_DB, lambda v, t: v >= t,
         "PSNR {v:+.1f} dB relative to the bicubic/identity reference (< {t:+.1f} dB): garbage"),
        ("ssim_ratio", ssim_ratio, SSIM_RATIO_MIN, lambda v, t: v >= t,
         "structure lost: median SSIM(output)/SSIM(reference) {v:.3g} < {t:g}"),
        ("nonfinite_frac", nonfinite_frac, NONFINITE_FRAC_MAX, lambda v, t: v <= t,
         "non-finite (NaN/Inf) output values: fraction {v:.3g}"),
        ("input_dependence", input_dependence, INPUT_DEPENDENCE_MIN, lambda v, t: v >= t,
         "ignores its input: median SSIM(output, own target) - SSIM(output, other targets) "
         "{v:.3g} < {t:g}"),
    ]
    checks, reasons = {}, []
    for name, value, threshold, passes, message in specs:
        ok = None if value is None else bool(value == value and passes(value, threshold))
        checks[name] = {"value": value, "threshold": threshold, "ok": ok}
        if ok is False:
            reasons.append(message.format(v=value, t=threshold))
    measured = [c["ok"] for c in checks.values() if c["ok"] is not None]
    status = "unknown" if not measured else ("healthy" if all(measured) else "collapsed")
    return Verdict(status, reasons, checks)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """The leaderboard's PSNR (``medq.metrics.psnr``) of (3, H, W) images; None at its cap
    (identical images: no gap to measure)."""
    from medq.metrics import PSNR_CAP_DB, psnr

    value = float(psnr(a.float()[None], b.float()[None])[0])
    return None if value >= PSNR_CAP_DB else value


def _ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> float | None:
    """The leaderboard's SSIM of (3, H, W) images; inside the eroded FOV with a (1, H, W) mask.
    None when undefined (no window inside the FOV)."""
    from medq.metrics import ssim

    value = float(ssim(x[None], y[None], None if mask is None else mask[None].float())[0])
    return None if math.isnan(value) else value


def image_checks(output: torch.Tensor, target: torch.Tensor, reference: torch.Tensor,
                 mask: torch.Tensor | None = None) -> dict:
    """Sanity statistics of one output (3, H, W) against its target and the reference
    upsampler's output (bicubic for SR, the input for enhance): what ``image_statistics`` turns
    into the image inputs of ``verdict``. Used by the inference harness (one per records row) and
    by the trainer's collapse monitor (on its probe batch), so both judge by the same rules.

    ``mask`` (1, H, W): the SSIMs are taken inside the eroded field of view (windows entirely
    inside it, as ``ssim_fov``), so the shared black rim cannot prop up a garbage output.
    These see the raw output before clamping, so NaN and out-of-range values are caught."""
    nonfinite = int((~torch.isfinite(output)).sum())
    clean = torch.nan_to_num(output.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
    ref = reference.float().clamp(0, 1)
    p, p_ref = _psnr(clean, target), _psnr(ref, target)
    tgt = target.float()[None]
    return {"output_std": float(clean.std()), "target_std": float(target.float().std()),
            "nonfinite": nonfinite, "numel": output.numel(),
            "psnr": p, "psnr_reference": p_ref,
            "ssim": _ssim(clean, tgt[0], mask), "ssim_reference": _ssim(ref, tgt[0], mask)}


def finite_median(values: Iterable) -> float | None:
    """Median of the values that are not None or NaN; None when there are none."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else None


def image_statistics(checks: list[dict]) -> dict:
    """Medians over ``image_checks`` results: output_std_ratio, psnr, psnr_reference,
    psnr_gap_db, ssim_ratio, and the nonfinite fraction of all values (None when not measurable)."""
    ratios = [c["output_std"] / c["target_std"] for c in checks if c["target_std"] > 0]
    gaps = [c["psnr"] - c["psnr_reference"] for c in checks
            if c["psnr"] is not None and c["psnr_reference"] is not None]
    ssim_ratios = [
        c["ssim"] / c["ssim_reference"]
        for c in checks
        if c.get("ssim") is not None and c.get("ssim_reference") and c["ssim_reference"] > 0
    ]
    numel = sum(c["numel"] for c in checks)
    return {"n": len(checks), "output_std_ratio": finite_median(ratios),
            "psnr": finite_median(c["psnr"] for c in checks),
            "psnr_reference": finite_median(c["psnr_reference"] for c in checks),
            "psnr_gap_db": finite_median(gaps), "ssim_ratio": finite_median(ssim_ratios),
            "nonfinite_frac": sum(c["nonfinite"] for c in checks) / numel if numel else None}


def input_dependence(outputs: torch.Tensor, targets: torch.Tensor,
                     masks: torch.Tensor | None = None, *, others: int = 8) -> float | None:
    """Mean over images i of SSIM(output_i, target_i) - mean over j of SSIM(output_i, target_j)
    for ``others`` other images j = i+1, ..., i+others (cyclically; all j != i when there are
    fewer). outputs, targets (N, 3, H, W); masks (N, 1, H, W): target j's field of view, eroded
    as in ``ssim_fov``. None for fewer than 2 images.

    An output that does not depend on its input scores exactly 0: for a constant image each term
    is a function of the target alone, s_j, and every cyclic shift averages the same s_j. A median
    over i would not be 0: gap_i = s_i - mean of its neighbours' s, which is skewed whenever a few
    targets are much harder than the rest (a constant image then passed the threshold on a few
    tiny test images). (others + 1) * N SSIMs: a fixed subset of the j keeps it linear in N."""
    from medq.metrics import ssim

    n = outputs.shape[0]
    if n < 2:
        return None
    out = torch.nan_to_num(outputs.float(), nan=0.0).clamp(0, 1)
    tgt = targets.float()
    own = ssim(out, tgt, masks).double()
    shifted = []
    for k in range(1, min(others, n - 1) + 1):
        m = None if masks is None else torch.roll(masks, -k, 0)
        shifted.append(ssim(out, torch.roll(tgt, -k, 0), m).double())
    other = torch.stack(shifted).nanmean(0)
    gaps = own - other
    gaps = gaps[~torch.isnan(gaps)]
    return float(gaps.mean()) if len(gaps) else None
