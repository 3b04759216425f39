"""How unlike the report model's training images a fundus photograph is (issue 30).

The report head is trained on synthetic images only (``medq.data.synthetic``), never on a real
photograph, because real photographs here carry no grade labels. On photographs from a camera it
has never seen it writes confident grades that mean nothing (healthy children's eyes graded 4). So
before a report is shown as a finding, the photograph is compared with the training distribution,
and beyond a calibrated threshold the report is "not assessed".

The measure depends on the image and the generator only, never on a model's weights, so
retraining the base model or a fine-tune cannot silently move it:

1. ``analysis_image``: the photograph through the any-size policy of the harness
   (``medq.harness.images.prepare``: field-of-view square, resized to an analysis size), the very
   framing the models see.
2. ``image_features``: ``FEATURES`` inside the field of view eroded by ``ERODE_FRACTION`` of the
   side (the rim is the least typical part of any photograph): the mean and coefficient of
   variation of each colour channel, the green/red and blue/red ratios, the high-pass energy of
   the green channel (relative to its mean) and its kurtosis at three scales, the rim-to-centre
   brightness ratio, the 90th percentile of the green gradient and its 99th/90th percentile ratio.
   Colour alone would not do: generator v3's colours were tuned to DRIVE's range; texture is what
   tells the generator's choroid and vessels from a camera's.
3. ``Reference``: the Mahalanobis distance of the log-features to those of synthetic *training*
   images at the same analysis size, on standardized features with the covariance shrunk towards
   the identity (``shrinkage``: a few hundred images estimate 17 x 17 covariances poorly, and an
   unshrunk inverse magnifies noise directions).
4. ``Calibration``: one ``Reference`` per analysis size with its threshold. The threshold comes
   from the synthetic side alone (``margin`` times the largest distance of held-out synthetic
   images), so it says "as far from the training images as no training-like image is"; the
   development photographs (DRIVE) are the check that real photographs land above it, and the
   calibration records how far. A camera closer to the generator than DRIVE would need a lower
   threshold, never a higher one: the rule errs towards "not assessed".

Which size: the largest calibrated size not above the photograph's own side (``size_for``), so a
64-px test image is judged against 64-px training images and an 800-px upload at the largest
calibrated size.

Files are the caller's: ``Calibration.from_dict`` / ``to_dict`` (the demo keeps the committed
JSON and the command that writes it, ``python -m demo calibrate-ood``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

FEATURE_VERSION = 1
"""Bumped whenever ``image_features`` changes; a calibration of another version is stale."""
FEATURES = ("mean_r", "mean_g", "mean_b", "cv_r", "cv_g", "cv_b", "g_over_r", "b_over_r",
            "highpass_0.7", "highpass_1.5", "highpass_3.0", "kurtosis_0.7", "kurtosis_1.5",
            "kurtosis_3.0", "rim_ratio", "gradient_p90", "gradient_p99_over_p90")
HIGH_PASS_SIGMAS = (0.7, 1.5, 3.0)
ERODE_FRACTION = 0.03
LOG_FLOOR = 1e-4
"""Features are compared as logarithms (ratios, not differences); this keeps log finite on a
black or flat image, which is then simply very far from the training images."""


def analysis_image(image: torch.Tensor, size: int, *, name: str = "image"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) float in [0, 1] -> the field-of-view square at ``size`` px, as (size, size, 3)
    float32 and its mask (size, size) bool: ``medq.harness.images.prepare``, the policy every
    model input follows. Raises ValueError naming ``name`` when there is no field of view."""
    from medq.harness.images import prepare

    prep = prepare(image, size, "enhance", name=name)
    return prep["target"].permute(1, 2, 0).numpy(), prep["mask"][0].numpy() > 0.5


def image_features(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``FEATURES`` of one analysis image (S, S, 3) float in [0, 1] with its FOV mask (S, S) bool,
    as float64 (len(FEATURES),). Raises ValueError when the eroded FOV holds under 64 pixels."""
    from scipy import ndimage

    side = img.shape[0]
    core = ndimage.binary_erosion(mask, iterations=max(1, round(ERODE_FRACTION * side)))
    if core.sum() < 64:
        raise ValueError(f"field of view of {int(mask.sum())} pixels at {side} px: too small to "
                         "measure")
    img = img.astype(np.float64)
    inside = img[core]
    mean, sd = inside.mean(0), inside.std(0)
    green = img[..., 1]
    g_mean = green[core].mean() + 1e-3
    out = [*mean, *(sd / (mean + 1e-3)), mean[1] / (mean[0] + 1e-3), mean[2] / (mean[0] + 1e-3)]
    energy, kurtosis = [], []
    for sigma in HIGH_PASS_SIGMAS:
        hp = (green - ndimage.gaussian_filter(green, sigma))[core]
        energy.append(hp.std() / g_mean)
        kurtosis.append(((hp - hp.mean()) ** 4).mean() / (hp.var() ** 2 + 1e-12))
    yy, xx = np.mgrid[0:side, 0:side]
    rho = np.hypot(yy - (side / 2 - 0.5), xx - (side / 2 - 0.5)) / (side / 2)
    lum = img.mean(-1)
    rim, centre = core & (rho > 0.75), core & (rho < 0.4)
    rim_ratio = lum[rim].mean() / (lum[centre].mean() + 1e-3) if rim.any() and centre.any() \
        else 0.0
    gy, gx = np.gradient(green)
    grad = np.hypot(gx, gy)[core]
    p90, p99 = np.percentile(grad, [90, 99])
    out += [*energy, *kurtosis, rim_ratio, p90 / g_mean, p99 / (p90 + 1e-6)]
    return np.asarray(out, np.float64)


def _log(features: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(features, np.float64), LOG_FLOOR))


@dataclass
class Reference:
    """The training images' log-features at one analysis size: standardization and the shrunk
    precision matrix of the standardized features, and the calibrated threshold."""

    size: int
    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    threshold: float = float("nan")

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of features (F,) or (N, F) to the training images; () or (N,)."""
        z = (_log(features) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", z, self.precision, z), 0.0))

    def to_dict(self) -> dict:
        return {"size": self.size, "threshold": self.threshold, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "precision": self.precision.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Reference":
        ref = cls(int(d["size"]), np.asarray(d["mean"], np.float64),
                  np.asarray(d["scale"], np.float64), np.asarray(d["precision"], np.float64),
                  float(d["threshold"]))
        n = len(FEATURES)
        if ref.mean.shape != (n,) or ref.scale.shape != (n,) or ref.precision.shape != (n, n):
            raise ValueError(f"reference at {ref.size} px: expected {n} features, got mean "
                             f"{ref.mean.shape}, scale {ref.scale.shape}, precision "
                             f"{ref.precision.shape}")
        return ref


def fit_reference(features: np.ndarray, size: int, shrinkage: float = 0.1) -> Reference:
    """``Reference`` of training-image features (N, F): log, standardize, covariance shrunk
    towards the identity by ``shrinkage`` (0: the sample covariance, 1: Euclidean distance)."""
    logs = _log(features)
    if logs.ndim != 2 or logs.shape[0] < 2 * logs.shape[1]:
        raise ValueError(f"fit_reference: {logs.shape[0]} images for {logs.shape[-1]} features; "
                         f"expected at least {2 * logs.shape[-1]}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage = {shrinkage}: expected a value in [0, 1]")
    mean, scale = logs.mean(0), logs.std(0) + 1e-9
    z = (logs - mean) / scale
    cov = (1 - shrinkage) * np.cov(z, rowvar=False) + shrinkage * np.eye(z.shape[1])
    return Reference(size, mean, scale, np.linalg.inv(cov))


def threshold_from_held_out(distances: np.ndarray, margin: float) -> float:
    """``margin`` times the largest held-out training-like distance (see the module docstring)."""
    if margin < 1.0:
        raise ValueError(f"margin = {margin}: expected >= 1 (below the held-out images' own "
                         "distances)")
    return float(margin * np.max(distances))


@dataclass
class Assessment:
    """The verdict on one photograph: its distance, the threshold of the size it was judged at,
    and whether it is unlike the training images (then no report is shown as a finding)."""

    distance: float
    threshold: float
    size: int

    @property
    def unlike(self) -> bool:
        return not self.distance <= self.threshold        # NaN (unmeasurable) counts as unlike


@dataclass
class Calibration:
    """References per analysis size, with what they were fitted on (``meta``, free-form: the
    command, the data, the separation measured on the development photographs)."""

    references: dict[int, Reference]
    feature_version: int = FEATURE_VERSION
    generator_version: int | None = None
    meta: dict = field(default_factory=dict)

    def size_for(self, side: int) -> int:
        """The largest calibrated size not above ``side`` (the smallest for a smaller image)."""
        sizes = sorted(self.references)
        fitting = [s for s in sizes if s <= side]
        return fitting[-1] if fitting else sizes[0]

    def stale_reason(self) -> str | None:
        """Why this calibration no longer describes the training images, or None."""
        from medq.data.synthetic import GENERATOR_VERSION

        if self.feature_version != FEATURE_VERSION:
            return (f"it measures features of version {self.feature_version}, the code computes "
                    f"version {FEATURE_VERSION}")
        if self.generator_version != GENERATOR_VERSION:
            return (f"it was fitted on synthetic images of generator version "
                    f"{self.generator_version}, the models train on version {GENERATOR_VERSION}")
        return None

    def assess(self, image: torch.Tensor, *, name: str = "image") -> Assessment:
        """Judge one photograph (3, h, w) float in [0, 1] at ``size_for`` its shorter side."""
        size = self.size_for(min(image.shape[-2:]))
        ref = self.references[size]
        try:
            feats = image_features(*analysis_image(image, size, name=name))
        except ValueError:
            return Assessment(float("nan"), ref.threshold, size)
        return Assessment(float(ref.distance(feats)), ref.threshold, size)

    def to_dict(self) -> dict:
        return {"feature_version": self.feature_version, "features": list(FEATURES),
                "generator_version": self.generator_version, **self.meta,
                "references": [self.references[s].to_dict() for s in sorted(self.references)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """Raises ValueError naming the missing or malformed key."""
        try:
            refs = {int(r["size"]): Reference.from_dict(r) for r in d["references"]}
            version = int(d["feature_version"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a report-OOD calibration: missing or malformed key {e}") from e
        if not refs:
            raise ValueError("not a report-OOD calibration: no references")
        meta = {k: v for k, v in d.items()
                if k not in ("references", "feature_version", "generator_version", "features")}
        return cls(refs, version, d.get("generator_version"), meta)


def synthetic_split(data_cfg, split: str) -> list[tuple[int, int]]:
    """(generator seed, index) of the synthetic images of ``split`` ("train" | "val" | "test")
    under a data config (``medq.config.DataConfig``): the ids and split of
    ``medq.data.build_dataset`` (train and val split the ``seed`` set; test is the ``test_seed``
    set), without rendering the other images."""
    from medq.data.split import split_ids

    if split == "test":
        return [(data_cfg.test_seed, i) for i in range(data_cfg.num_test_images)]
    ids = [f"syn{data_cfg.seed}_{i:05d}" for i in range(data_cfg.num_images)]
    keep = set(split_ids(ids, data_cfg.val_fraction, 0.0)[split])
    return [(data_cfg.seed, i) for i, x in enumerate(ids) if x in keep]


def synthetic_image(seed: int, index: int, size: int) -> torch.Tensor:
    """Synthetic image ``index`` of the data seed ``seed`` at ``size`` px, (3, S, S) float in
    [0, 1]: the pixels ``build_dataset`` trains on."""
    from medq.data.synthetic import generate_fundus
    from medq.data.tasks import id_seed

    rgb = generate_fundus(id_seed("synthetic", seed, index), size).image
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
