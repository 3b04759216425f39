"""Healthy or collapsed: the per-checkpoint verdict, with the reasons.

    v = verdict(undecodable_rate=0.21, output_std_ratio=0.02, psnr_gap_db=-14.0, nonfinite_frac=0.0)
    v.status          # 'collapsed'
    v.reasons         # ['undecodable-token rate 0.21 > 0.01 ...', 'outputs near-constant ...', ...]
    v.checks          # every check: value, threshold, ok (None = not measured)

Each input may be ``None`` (not measured: e.g. a baseline has no text, ``score-text`` has no
images); a check that was not measured neither passes nor fails. With nothing measured the status
is ``unknown``. The failure modes are those of the original runs (DESIGN.md section 1): v2's
model sampled padding ids (``TypeError: ... NoneType found``) and produced garbage images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
            nonfinite_frac: float | None = None) -> Verdict:
    """Combine the collapse signals of one checkpoint into a ``Verdict``.

    - ``undecodable_rate``: undecodable ids / generated ids (``medq.textcheck.TextStats``).
    - ``output_std_ratio``: median over images of std(output) / std(target).
    - ``psnr_gap_db``: median over images of PSNR(output) - PSNR(reference upsampler).
    - ``ssim_ratio``: median over images of SSIM(output) / SSIM(reference), against the target.
    - ``nonfinite_frac``: fraction of output values that are NaN or Inf (before clamping)."""
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
