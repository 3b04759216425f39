"""The unified transformer of the mini-BAGEL over one packed sequence per sample.

Layout of a sample (roles in ``medq.models.sequence``)::

    [ condition image tokens | text tokens: BOS prompt SEP report EOS | generated image tokens ]

- condition image: clean VAE latents of the (bicubic-upsampled) input, patchified, timestep 0;
  full attention among themselves.
- text: causal; the prompt sees the condition image, the report sees the image and the prompt.
- generated image: noisy latents with a timestep embedding, plus (``cond_at_gen``) a projection
  of the condition token at the same grid position; full attention among themselves, and they see
  the condition image and the prompt (never the report: at inference there is none).

Batches are padded to equal length (one sequence per sample, pad positions attend only to
themselves) and attention is ``scaled_dot_product_attention`` with a boolean block mask
(B, 1, L, L). Text positions count within the text stream and image positions are 2-D sin-cos
over the patch grid, so removing a segment (no generated image when writing a report) leaves the
other tokens' inputs unchanged. Two heads: the text head (padded vocabulary, Qwen2-style) and the
flow head (``llm2vae``: a zero-initialised linear map to patch velocities, ``v = eps - x0``; with
``cond_prior`` it predicts the difference from ``x_t - cond``, so an untrained head maps pure noise
to the condition latent).

Inference splits the forward (``prefix``, ``velocity``, ``next_text``): no condition or text token
attends to anything after it, so their keys and values (``KVCache``) are computed once per image
and reused at every Euler step, every one-step draw and every next report token. Training uses the
one packed ``forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from medq.config import ModelConfig
from medq.models.tokenizer import padded_vocab_size


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, (h/p)(w/p), C p p), row-major over the patch grid."""
    n, c, h, w = latents.shape
    if h % p or w % p:
        raise ValueError(f"patchify: latent size {(h, w)} is not a multiple of patch_size {p}")
    x = latents.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``patchify``: (N, (h/p)(w/p), C p p) -> (N, C, h, w)."""
    n = tokens.shape[0]
    x = tokens.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c, h, w)


def sincos_1d(pos: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """pos (...,) float -> (..., dim) [cos | sin] embedding."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=pos.device, dtype=torch.float32) / half
    )
    args = pos.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def grid_embedding(gh: int, gw: int, dim: int, device) -> torch.Tensor:
    """(gh * gw, dim) 2-D sin-cos embedding of a patch grid, row-major."""
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim - dim // 2)], dim=-1)


KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class KVCache:
    """Keys and values of tokens already run through the blocks, one (k, v) per layer, each
    (B, heads, P, d_head): what later tokens attend to without recomputing them. In the block
    mask, the condition image and the prompt never attend to the generated image, and text
    attends only to what precedes it, so their keys are the same at every Euler step and for every
    next report token (``MiniBagel.prefix``)."""

    kv: list[KV]

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[2]


class Block(nn.Module):
    """Pre-norm transformer block: masked multi-head self-attention + GELU MLP."""

    def __init__(self, d: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.RMSNorm(d)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KV | None = None,
                keep: bool = False):
        """x (B, L, d); mask (B, 1, L, P + L) bool over [past keys | x's keys]. ``past``: keys and
        values (B, heads, P, d_head) of earlier tokens that x attends to (a ``KVCache`` layer).
        Returns x, or with ``keep`` (x, (keys, values) of past and x together)."""
        b, L, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .view(b, L, 3, self.heads, d // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, L, d))
        x = x + self.mlp(self.norm2(x))
        return (x, (k, v)) if keep else x


class PriorNet(nn.Module):
    """A small CNN that sharpens the condition latent into the flow head's residual prior
    (``prior_conv_channels``): prior = cond + net(cond), on the latent grid.

    ResDiff's regression prior: a CNN predicts the part of the target the condition determines,
    the flow models the rest. It is trained by its own latent MSE (``loss.prior_weight``, relative
    per sample) and by nothing else: the flow's velocity uses it without passing its gradient back
    (``MiniBagel.flow_head``), so a noisy velocity loss cannot pull the regression off its target.
    Which task and which kind of image it sharpens comes from the instruction (the mean final
    hidden state of the instruction's tokens, which see the condition too), a FiLM of its first
    layer: deterministic, so at inference the prior is computed once per tile, not at every Euler
    step. FiLM and the last layer are zero at init: a model with it starts as the function
    without it."""

    def __init__(self, channels: int, hidden: int, d_model: int, layers: int = 4):
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        # Which task and how degraded: the instruction's mean hidden state scales and shifts the
        # first layer's features (FiLM); zero at init.
        self.film = nn.Linear(d_model, 2 * hidden)
        mods: list[nn.Module] = [nn.SiLU()]
        for _ in range(layers - 2):
            mods += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU()]
        mods.append(nn.Conv2d(hidden, channels, 3, padding=1))
        self.net = nn.Sequential(*mods)
        for layer in (self.film, self.net[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, cond: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """cond (N, C, h, w), context (N, d_model) -> prior (N, C, h, w)."""
        scale, shift = self.film(context).chunk(2, dim=-1)
        x = self.inp(cond) * (1 + scale[..., None, None]) + shift[..., None, None]
        return cond + self.net(x)


class MiniBagel(nn.Module):
    """Unified text + image transformer. ``vocab_size``: the tokenizer's (decodable) ids; the text
    head has ``vocab_padded`` >= vocab_size rows. Shapes: see ``forward``."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.vocab_padded = padded_vocab_size(vocab_size, cfg.vocab_pad_multiple)
        d, p, c = cfg.d_model, cfg.patch_size, cfg.latent_channels
        self.patch_dim = c * p * p
        self.tok_emb = nn.Embedding(self.vocab_padded, d)
        self.text_pos = nn.Embedding(2 * cfg.max_text_len, d)
        self.vae2llm = nn.Linear(self.patch_dim, d)
        self.type_emb = nn.Embedding(3, d)  # text, condition image, generated image
        # Zero at init so that a model without it and one with it start as the same function.
        self.cond2gen = nn.Linear(self.patch_dim, d) if cfg.cond_at_gen else None
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.n_layers)
        )
        self.norm = nn.RMSNorm(d)
        self.text_head = nn.Linear(d, self.vocab_padded, bias=False)
        self.llm2vae = nn.Linear(d, self.patch_dim)
        self.apply(self._init)
        self.prior_net = (PriorNet(c, cfg.prior_conv_channels, d, cfg.prior_conv_layers)
                          if cfg.prior_conv_channels and cfg.cond_prior else None)
        self.out_conv = nn.Conv2d(c, c, 3, padding=1) if cfg.out_conv else None
        if self.out_conv is not None:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)
        if self.cond2gen is not None:
            nn.init.zeros_(self.cond2gen.weight)
            nn.init.zeros_(self.cond2gen.bias)
        # Zero flow head: v_hat = 0 at init, so a fresh model's flow loss starts at E|eps - x0|^2.
        nn.init.zeros_(self.llm2vae.weight)
        nn.init.zeros_(self.llm2vae.bias)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """t (N,) in [0, 1] -> (N, d)."""
        return self.time_mlp(sincos_1d(t * 1000.0, 256))

    # The parts of one packed sequence, each optional but the text and the mask.
    def forward(self, text_ids: torch.Tensor, text_pos: torch.Tensor,  # noqa: PLR0913
                mask: torch.Tensor, cond: torch.Tensor | None = None,
                gen: torch.Tensor | None = None, t: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None,
                return_prior: bool = False, report_cond: torch.Tensor | None = None,
                prompt_mask: torch.Tensor | None = None,
                report_grid: tuple[int, int] | None = None):
        """One packed forward.

        text_ids, text_pos (B, T) long; cond, gen (B, n, C p p) patch tokens (either may be None),
        t (B,) timesteps of ``gen``; grid = (gh, gw) with gh * gw = n; mask (B, L, L) bool with
        L = n_cond + T + n_gen in the order [cond | text | gen] (True = may attend); with
        ``report_cond`` (B, n, C p p, the report's own condition in training) the order is
        [report_cond | cond | text | gen] (``medq.models.sequence.training_mask``), on its own
        grid ``report_grid`` (default ``grid``: the report's view may be larger than a tile).
        ``prompt_mask`` (B, T) bool: the instruction's text positions (role PROMPT), whose mean
        hidden state tells the prior net its task; required with a prior net and ``gen``.
        Returns (hidden (B, L, d), text_logits (B, T, vocab_padded), v (B, n, C p p) or None), and
        with ``return_prior`` also the prior net's output (B, n, C p p), None without the net (its
        own loss, ``loss.prior_weight``, needs it; computed here so that FSDP has gathered it)."""
        b = text_ids.shape[0]
        parts = [] if report_cond is None else [self.embed_cond(report_cond, report_grid or grid)]
        if cond is not None:
            parts.append(self.embed_cond(cond, grid))
        parts.append(self.embed_text(text_ids, text_pos))
        if gen is not None:
            parts.append(self.embed_gen(gen, t, grid, cond))
        x = torch.cat(parts, dim=1)
        if mask.shape != (b, x.shape[1], x.shape[1]):
            raise ValueError(f"MiniBagel: mask {tuple(mask.shape)} does not match the sequence "
                             f"({b}, {x.shape[1]}, {x.shape[1]})")
        m = mask[:, None]
        for blk in self.blocks:
            x = blk(x, m)
        h = self.norm(x)
        n_cond = sum(c.shape[1] for c in (report_cond, cond) if c is not None)
        T = text_ids.shape[1]
        logits = self.text_head(h[:, n_cond:n_cond + T])
        v = prior = None
        if gen is not None:
            if cond is not None and self.prior_net is not None:
                if prompt_mask is None:
                    raise ValueError("MiniBagel.forward: prompt_mask is required with a prior net")
                prior = self.prior(cond, grid, self.context(h[:, n_cond:n_cond + T], prompt_mask))
            elif cond is not None:
                prior = cond
            v = self.flow_head(h[:, n_cond + T:], gen, grid, prior)
        if return_prior:
            return x, logits, v, (prior if self.prior_net is not None else None)
        return x, logits, v

    @staticmethod
    def context(h_text: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """The prior net's context: the mean of the final hidden states (B, T, d) over the
        instruction's positions ``prompt_mask`` (B, T) -> (B, d) (zero without an instruction)."""
        w = prompt_mask.to(h_text.dtype)[..., None]
        return (h_text * w).sum(1) / w.sum(1).clamp_min(1.0)

    # -- the pieces of ``forward``, also used one segment at a time by inference with a cache

    def embed_cond(self, cond: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Condition patch tokens (B, n, C p p) -> their inputs (B, n, d) (timestep 0)."""
        pos = grid_embedding(grid[0], grid[1], self.cfg.d_model, cond.device)
        t0 = self.time_embedding(torch.zeros(cond.shape[0], device=cond.device))
        return self.vae2llm(cond) + pos.to(self.vae2llm.weight.dtype) + self.type_emb.weight[1] \
            + t0[:, None]

    def embed_text(self, text_ids: torch.Tensor, text_pos: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and positions -> (B, T, d)."""
        return self.tok_emb(text_ids) + self.text_pos(text_pos) + self.type_emb.weight[0]

    def embed_gen(self, gen: torch.Tensor, t: torch.Tensor, grid: tuple[int, int],
                  cond: torch.Tensor | None = None) -> torch.Tensor:
        """Noisy patch tokens (B, n, C p p) at timesteps t (B,) -> (B, n, d); with ``cond_at_gen``
        plus the condition token at the same grid position."""
        pos = grid_embedding(grid[0], grid[1], self.cfg.d_model, gen.device)
        g = self.vae2llm(gen) + pos.to(self.vae2llm.weight.dtype) + self.type_emb.weight[2] \
            + self.time_embedding(t)[:, None]
        if self.cond2gen is not None and cond is not None:
            g = g + self.cond2gen(cond)  # same grid: generated token i sees condition token i
        return g

    def flow_head(self, h_gen: torch.Tensor, gen: torch.Tensor, grid: tuple[int, int],
                  prior: torch.Tensor | None) -> torch.Tensor:
        """Final-normed hidden states of the generated tokens (B, n, d) -> v (B, n, C p p). With
        ``model.cond_prior`` the head predicts the difference from ``gen - prior`` (``prior``: the
        condition tokens, or their sharpening by the prior net): an untrained head flows x_t onto
        the prior. The prior enters without its gradient: the prior net is trained by its own loss
        only (``PriorNet``)."""
        v = self.llm2vae(h_gen)
        if self.out_conv is not None:
            # Across the patch borders: v + conv(v) on the latent grid (zero at init).
            p, c = self.cfg.patch_size, self.cfg.latent_channels
            v_img = unpatchify(v, p, c, grid[0] * p, grid[1] * p)
            v = patchify(v_img + self.out_conv(v_img), p)
        if self.cfg.cond_prior and prior is not None:
            v = v + (gen - prior.detach())
        return v

    def attend(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None
               ) -> tuple[torch.Tensor, KVCache]:
        """Embedded tokens x (B, L, d) through the blocks, attending to ``cache`` (P tokens) and to
        each other as ``mask`` (B, L, P + L) says -> (final-normed hidden (B, L, d), the cache
        extended by x's keys and values)."""
        m, kv = mask[:, None], []
        for i, blk in enumerate(self.blocks):
            x, layer = blk(x, m, None if cache is None else cache.kv[i], keep=True)
            kv.append(layer)
        return self.norm(x), KVCache(kv)

    def prefix(self, text_ids: torch.Tensor, text_pos: torch.Tensor, mask: torch.Tensor,
               cond: torch.Tensor | None = None, grid: tuple[int, int] | None = None
               ) -> tuple[torch.Tensor, KVCache, torch.Tensor]:
        """[cond | text] alone (``mask``: the top-left (P, P) block of the full sequence's mask)
        -> (text logits (B, T, vocab_padded), its ``KVCache``, the text's final hidden states
        (B, T, d), from which ``context`` is taken). Exact for what comes after: the block mask
        never lets condition or text tokens attend to later segments."""
        parts = [] if cond is None else [self.embed_cond(cond, grid)]
        parts.append(self.embed_text(text_ids, text_pos))
        h, cache = self.attend(torch.cat(parts, dim=1), mask)
        h_text = h[:, h.shape[1] - text_ids.shape[1]:]
        return self.text_head(h_text), cache, h_text

    def velocity(self, cache: KVCache, mask: torch.Tensor, gen: torch.Tensor, t: torch.Tensor,
                 cond: torch.Tensor | None, grid: tuple[int, int],
                 prior: torch.Tensor | None = None) -> torch.Tensor:
        """The flow head's v (B, n, C p p) for noisy tokens ``gen`` at ``t`` after the prefix in
        ``cache``; ``mask``: the generated rows of the full mask (B, n, P + n); ``prior``: the
        condition's prior (``prior``, computed once per condition; default: the condition itself,
        right only without a prior net). Equals ``forward``'s v on [cond | text | gen] up to float
        reduction order, at the generated tokens' cost."""
        h, _ = self.attend(self.embed_gen(gen, t, grid, cond), mask, cache)
        if prior is None and cond is not None:
            if self.prior_net is not None:
                raise ValueError("MiniBagel.velocity: a model with a prior net needs its prior")
            prior = cond
        return self.flow_head(h, gen, grid, prior)

    def next_text(self, cache: KVCache, text_ids: torch.Tensor, text_pos: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """New text tokens (B, k) after the cached ones -> (their logits (B, k, vocab_padded),
        the extended cache); ``mask`` (B, k, P + k)."""
        h, cache = self.attend(self.embed_text(text_ids, text_pos), mask, cache)
        return self.text_head(h), cache

    def prior(self, cond: torch.Tensor, grid: tuple[int, int], context: torch.Tensor
              ) -> torch.Tensor:
        """The residual prior of condition tokens (B, n, C p p) on ``grid``: the condition itself,
        or with ``prior_conv_channels`` its sharpening by ``PriorNet`` given ``context`` (B, d),
        the instruction's mean hidden state (``context``); same shape."""
        if self.prior_net is None:
            return cond
        p, c = self.cfg.patch_size, self.cfg.latent_channels
        h, w = grid[0] * p, grid[1] * p
        return patchify(self.prior_net(unpatchify(cond, p, c, h, w), context), p)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
