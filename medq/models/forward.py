"""The training forward of the mini-BAGEL: frozen-VAE encoding, flow noising, one packed pass.

    fwd = training_forward(model, vae, tokenizer, batch, timestep_shift=1.0, generator=g)
    terms = medq.losses.compose_losses(cfg.loss, fwd, batch, vae.decode)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medq.models.flow import add_noise, sample_timesteps
from medq.models.sequence import PROMPT, pack_text, sequence_mask, training_mask
from medq.models.transformer import patchify, unpatchify


@dataclass
class TrainForward:
    """text_logits (B, T, V_padded); text_targets (B, T), -100 = ignore; v_hat, v_target, x_t, x0
    (N, C, h, w) latents (N = B); t (N,); hidden (B, L, d) last hidden state; latent_hw (h, w)."""

    text_logits: torch.Tensor
    text_targets: torch.Tensor
    v_hat: torch.Tensor
    v_target: torch.Tensor
    x_t: torch.Tensor
    x0: torch.Tensor
    t: torch.Tensor
    hidden: torch.Tensor
    latent_hw: tuple[int, int]
    prior: torch.Tensor | None = None
    """(N, C, h, w): the prior net's sharpened condition latent (``model.prior_conv_channels``),
    None without one."""
    cond: torch.Tensor | None = None
    """(N, C, h, w): the condition latent (what the prior sharpens)."""
    render_offset: torch.Tensor | None = None
    """(N, 3, H, W) or None: what turns a decoded latent into the rendered image,
    ``image = decode(z) + render_offset``; with ``model.pixel_residual`` it is ``cond_image -
    decode(cond)`` (no gradient), so that the image-space losses see the image inference shows
    (``render``). Set only when asked for (``with_render_offset``)."""


def render_offset(vae, cond_latent: torch.Tensor, cond_image: torch.Tensor) -> torch.Tensor:
    """``cond_image - decode(cond_latent)`` (N, 3, H, W), no gradient: added to ``decode(x0)`` it
    renders an image as a residual over the condition image (``model.pixel_residual``)."""
    with torch.no_grad():
        return (cond_image - vae.decode(cond_latent)[..., :cond_image.shape[-2],
                                                     :cond_image.shape[-1]]).float()


def resize_bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, H, W) with ``medq.data.bicubic_resize`` (the one the data and the
    baselines use, so the model's condition is the bicubic baseline's image)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    from medq.data import bicubic_resize

    return bicubic_resize(images, size)


def pad_to_multiple(images: torch.Tensor, m: int) -> torch.Tensor:
    """Zero-pad bottom/right so that H and W are multiples of ``m`` (the collate convention)."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % m, 0, -h % m))


def condition_images(inputs: torch.Tensor, input_size: torch.Tensor | None,
                     target_size: torch.Tensor | None, canvas: tuple[int, int]) -> torch.Tensor:
    """Each input cropped to its true size, bicubic-upsampled to its target size, zero-padded
    into ``canvas`` (H, W): (N, 3, h, w) -> (N, 3, H, W)."""
    n = inputs.shape[0]
    if input_size is None or target_size is None:
        return resize_bicubic(inputs, canvas)
    if bool((input_size == input_size[0]).all()) and bool((target_size == target_size[0]).all()):
        ih, iw = (int(v) for v in input_size[0])
        th, tw = (int(v) for v in target_size[0])
        up = resize_bicubic(inputs[..., :ih, :iw], (th, tw))
        return F.pad(up, (0, canvas[1] - tw, 0, canvas[0] - th))
    out = inputs.new_zeros(n, 3, *canvas)
    for i in range(n):
        ih, iw = (int(v) for v in input_size[i])
        th, tw = (int(v) for v in target_size[i])
        out[i, :, :th, :tw] = resize_bicubic(inputs[i:i + 1, :, :ih, :iw], (th, tw))[0]
    return out


# The model's three parts and the batch, then keyword options with defaults (the task and the
# tests name them).
def training_forward(model, vae, tokenizer, batch: dict, *,  # noqa: PLR0913
                     timestep_shift: float = 1.0, generator: torch.Generator | None = None,
                     instruction_dropout: float = 0.0, question: str | None = None,
                     with_render_offset: bool = False) -> TrainForward:
    """One training forward on a collated batch (``medq.data.collate``).

    Uses batch["input"] (N, 3, h, w), ["target"] (N, 3, H, W), ["instruction"], ["report"] (lists;
    a None report trains no text for that sample), and ["input_size"], ["target_size"] (N, 2)
    when present. With ["report_input"] (N, 3, T, T) (training tiles, ``medq.data.tiles``) the
    report is written from it, and the image from the tile's own condition
    (``medq.models.sequence.training_mask``); without it both read the one condition. Target and
    condition are encoded by the frozen ``vae`` under no_grad; t = shift(sigmoid(N(0, 1)));
    x_t = (1-t) x0 + t eps. ``instruction_dropout``: probability of replacing a sample's
    instruction by the empty one (trains the unconditional branch used by classifier-free
    guidance). ``question``: the text the report answers (default ``medq.data.REPORT_PROMPT``, the
    harness's prompt); the report sees it and the image, never the editing instruction.
    ``with_render_offset``: also compute ``render_offset`` for the image-space losses."""
    cfg = model.cfg
    dev = batch["target"].device
    m = vae.downsample * cfg.patch_size
    target = pad_to_multiple(batch["target"], m)
    canvas = tuple(target.shape[-2:])
    cond_img = condition_images(
        batch["input"], batch.get("input_size"), batch.get("target_size"), canvas
    )
    report_input = batch.get("report_input")
    with torch.no_grad():
        x0 = vae.encode(target).float()
        cond = vae.encode(pad_to_multiple(cond_img, m)).float()
        rcond = (None if report_input is None
                 else vae.encode(pad_to_multiple(report_input, m)).float())
    n, c, h, w = x0.shape
    gdev = generator.device if generator is not None else dev
    t = sample_timesteps(n, timestep_shift, generator, device=gdev).to(dev)
    eps = torch.randn(x0.shape, generator=generator, device=gdev).to(dev)
    x_t, v_target = add_noise(x0, eps, t)
    prompts = list(batch["instruction"])
    if instruction_dropout > 0:
        drop = torch.rand(n, generator=generator, device=gdev) < instruction_dropout
        prompts = ["" if bool(dd) else p for p, dd in zip(prompts, drop)]
    reports = list(batch["report"]) if "report" in batch else None
    questions = None
    if reports is not None:
        if question is None:
            from medq.data.text import REPORT_PROMPT as question
        questions = [None if r is None else question for r in reports]
    text = pack_text(tokenizer, prompts, reports, cfg.max_text_len, device=dev, questions=questions)
    p = cfg.patch_size
    cond_tok, gen_tok = patchify(cond, p), patchify(x_t, p)
    rcond_tok = None if rcond is None else patchify(rcond, p)
    if rcond_tok is None:
        mask = sequence_mask(text, cond_tok.shape[1], gen_tok.shape[1])
    else:
        has_report = torch.tensor([r is not None for r in (reports or [None] * n)], device=dev)
        mask = training_mask(text, cond_tok.shape[1], gen_tok.shape[1], has_report,
                             n_report=rcond_tok.shape[1])
    hidden, logits, v, prior = model(text.ids, text.pos, mask, cond=cond_tok, gen=gen_tok, t=t,
                                     grid=(h // p, w // p), return_prior=True,
                                     report_cond=rcond_tok, prompt_mask=text.roles == PROMPT,
                                     report_grid=None if rcond is None else
                                     (rcond.shape[-2] // p, rcond.shape[-1] // p))
    v_hat = unpatchify(v, p, c, h, w)
    prior = None if prior is None else unpatchify(prior, p, c, h, w)
    offset = None
    if with_render_offset and cfg.pixel_residual:
        offset = render_offset(vae, cond, cond_img)
    return TrainForward(logits, text.targets, v_hat, v_target, x_t, x0, t, hidden, (h, w), prior,
                        cond, offset)
