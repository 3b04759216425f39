"""Image-quality metrics, by family: a functional core of per-image values, and the feature
backbones and distances of the distribution metrics (FID, KID).

    m = image_metrics(pred, target, mask)    # {"psnr": (N,), ..., "psnr_eroded_fov": (N,)}
    bbs = feature_backbones("auto")          # Inception (FID / KID) + the random ResNet-18
    feats = image_features(png_paths, bbs[0])      # (N, 2048) through clean-fid's "clean" resize
    frechet_distance(f_pred, f_target); kid_interval(f_pred, f_target, paired=True)

| module | family |
|---|---|
| ``fidelity`` | PSNR, SSIM, whole image and FOV (incl. the eroded FOV), Y channel |
| ``multiscale`` | MS-SSIM, whole image and FOV (from 176 px) |
| ``consistency`` | LR consistency of SR outputs |
| ``per_image`` | every per-image column at once (``image_metrics``, ``IMAGE_METRICS``) |
| ``features`` | backbones (the pinned Inception, the random ResNet-18), image features |
| ``distances`` | Frechet distance, KID (paired / unpaired) with jackknife intervals, KID a - b |
| ``artifacts`` | seams along tile borders and a pattern at the token pitch, against the target |

Conventions (``docs/ARCHITECTURE.md``): float32 RGB in [0, 1], NCHW; masks (N, 1, H, W) in {0, 1}.
Each module's docstring states its settings; ``docs/BACKGROUND.md`` explains the protocol.
"""

from medq.metrics.artifacts import pitch_peaks, seam_ratio
from medq.metrics.consistency import lr_consistency_psnr
from medq.metrics.distances import (
    distribution_protocol,
    frechet_distance,
    kid,
    kid_difference,
    kid_interval,
)
from medq.metrics.features import (
    BACKBONE_CHOICES,
    BACKBONE_HELP,
    FEATURE_BATCH,
    INCEPTION_ENV,
    INCEPTION_MEMBER,
    INCEPTION_PACKAGE,
    INCEPTION_SHA256,
    FeatureBackbone,
    FeatureWeightsError,
    feature_backbones,
    feature_extractor,
    image_features,
    image_features_many,
    inception_backbone,
    inception_network,
    inception_path,
    random_resnet18_backbone,
    verify_inception,
)
from medq.metrics.fidelity import (
    PSNR_CAP_DB,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    eroded_fov,
    psnr,
    psnr_eroded_fov,
    rgb_to_y,
    ssim,
    ssim_unsupported_reason,
)
from medq.metrics.multiscale import (
    MS_SSIM_BETAS,
    MS_SSIM_MIN_SIDE,
    masked_ms_ssim,
    ms_ssim,
    ms_ssim_supported,
    ms_ssim_unsupported_reason,
    ssim_cs_maps,
)
from medq.metrics.per_image import (
    FIDELITY_METRICS,
    IMAGE_METRICS,
    SCORED_METRICS,
    image_metrics,
    per_image_protocol,
)

__all__ = [
    "pitch_peaks",
    "seam_ratio",
    "BACKBONE_CHOICES", "BACKBONE_HELP", "FEATURE_BATCH", "FIDELITY_METRICS", "IMAGE_METRICS",
    "INCEPTION_ENV", "INCEPTION_MEMBER", "INCEPTION_PACKAGE", "INCEPTION_SHA256", "MS_SSIM_BETAS",
    "MS_SSIM_MIN_SIDE", "PSNR_CAP_DB", "SCORED_METRICS", "SSIM_K1", "SSIM_K2", "SSIM_SIGMA",
    "SSIM_WINDOW", "FeatureBackbone", "FeatureWeightsError", "distribution_protocol", "eroded_fov",
    "feature_backbones", "feature_extractor", "frechet_distance", "image_features",
    "image_features_many", "image_metrics", "inception_backbone", "inception_network",
    "inception_path", "kid", "kid_difference", "kid_interval", "lr_consistency_psnr",
    "masked_ms_ssim", "ms_ssim", "ms_ssim_supported", "ms_ssim_unsupported_reason",
    "per_image_protocol", "psnr", "psnr_eroded_fov", "random_resnet18_backbone", "rgb_to_y",
    "ssim", "ssim_cs_maps", "ssim_unsupported_reason", "verify_inception",
]
