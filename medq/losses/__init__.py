"""Losses: SSIM, gradient shaping, the image-space objective, gradient probe, composer.

    from medq.losses import ssim, ssim_loss, scale_gradient, clamp_gradient
    terms = compose_losses(cfg.loss, fwd, batch, decode)   # {"ce", "mse", ..., "total"}, .x0_hat
    stats = gradient_probe(terms.x0_hat, {k: v for k, v in terms.items() if k != "total"})
"""

from medq.losses.grad import clamp_gradient, scale_gradient
from medq.losses.image_space import (
    ImageTerm,
    image_space_loss_from_x0,
    image_space_loss_packed,
    unpatchify,
)
from medq.losses.objective import LossTerms, compose_losses, cross_entropy
from medq.losses.probe import gradient_probe
from medq.losses.ssim import ssim, ssim_loss

__all__ = ["ssim", "ssim_loss", "scale_gradient", "clamp_gradient", "ImageTerm",
           "image_space_loss_from_x0",
           "image_space_loss_packed", "unpatchify", "gradient_probe", "compose_losses",
           "cross_entropy", "LossTerms"]
