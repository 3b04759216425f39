"""``MiniBagelAdapter``: the mini-BAGEL behind ``medq.protocol.ImageTextModel``.

    adapter = MiniBagelAdapter(model, vae, tokenizer, cfg.sample, name="ssim_v3-1a2b@step300/ema")
    out = adapter.edit(lowres, instructions, tasks, (64, 64), seed=0)   # (N, 3, 64, 64) in [0, 1]
    ids = adapter.generate_report(images, prompts, seed=0)             # raw ids, EOS included
    adapter.decode(ids[0])                                              # DecodeResult, never raises
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from medq.config import SampleConfig
from medq.models.flow import euler_sample
from medq.models.forward import pad_to_multiple, resize_bicubic
from medq.models.sequence import PROMPT, pack_text, sequence_mask
from medq.models.transformer import patchify, unpatchify
from medq.protocol import DecodeResult


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval + no_grad for the duration, restoring the training flag after (the training loop
    calls the adapter on its live model for the collapse probe)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def top_p_sample(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator) -> torch.Tensor:
    """logits (B, V) -> ids (B,): softmax(logits / temperature) restricted to the smallest set of
    ids whose probability reaches ``top_p`` (nucleus sampling)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely id
    sorted_p = sorted_p * keep
    pick = torch.multinomial(
        sorted_p.cpu() / sorted_p.sum(-1, keepdim=True).cpu(), 1, generator=generator
    )
    return order.gather(-1, pick.to(order.device)).squeeze(-1)


class MiniBagelAdapter:
    """``ImageTextModel`` over a ``MiniBagel``, its frozen VAE and tokenizer; sampling settings
    from ``SampleConfig`` (Euler steps, shift, text guidance, max_new_tokens, temperature,
    top_p)."""

    seed_per_image = True
    """``edit`` / ``generate_report`` accept one seed per image, so the harness can batch them and
    still give each image the output it would get alone
    (``medq.harness.text.call_per_image_seeds``)."""

    OUTPUTS = ("sample", "onestep")

    def __init__(self, model, vae, tokenizer, sample_cfg: SampleConfig | None = None,
                 name: str = "mini-bagel", output: str = "sample"):
        """``output``: what ``edit`` returns. ``sample``: the Euler sampler from noise scaled by
        ``sample.noise_temperature`` (BAGEL's output, tempered; sharp, pays for it in PSNR).
        ``onestep``: a one-step estimate of the clean image, one forward per noise draw instead of
        ``steps``: the condition latent noised to t = ``sample.onestep_t``, ``x_t = (1 - t) cond
        + t eps``, and the model's x0 prediction ``x0_hat = x_t - t v_hat(x_t, t)``, averaged over
        ``sample.onestep_draws`` draws, rendered. It is not the posterior mean E[x0 | condition]:
        the noised condition stands in for an x_t the model would have seen (an SDEdit-style
        start), and a few draws average little. At t = 1 (``onestep_t = 1``) x_t is pure noise and
        the prediction estimates that posterior mean. (Draw 0 is the noise a sample of the same
        seed starts from; draw k is the k-th slice of the seeded generator.)"""
        if output not in self.OUTPUTS:
            raise ValueError(
                f"MiniBagelAdapter: output = {output!r}; expected one of {self.OUTPUTS}"
            )
        self.model, self.vae, self.tokenizer = model, vae, tokenizer
        self.sample_cfg = sample_cfg or SampleConfig()
        self.name = name
        self.output = output

    def with_sample(self, sample_cfg: SampleConfig | None = None, **changes
                    ) -> "MiniBagelAdapter":
        """A copy of this adapter (same network, VAE, tokenizer, name and output) that samples
        with ``sample_cfg`` and/or ``changes`` (``SampleConfig`` fields, e.g. ``temperature=1``).
        Sweeps and the harness's sampled reports ask for a copy; nobody writes the settings of
        a loaded model back from outside (the checkpoint's config, with ``--set sample.*``
        applied once by ``medq.harness.load.load_run``, stays what this adapter was made with)."""
        import dataclasses

        sc = dataclasses.replace(sample_cfg or self.sample_cfg, **changes)
        return MiniBagelAdapter(self.model, self.vae, self.tokenizer, sc, name=self.name,
                                output=self.output)

    @property
    def settings(self) -> dict:
        """What the harness records about how this model generates (``medq.harness.run``)."""
        import dataclasses

        sample = dataclasses.asdict(self.sample_cfg)
        if self.output == "sample":
            # The sampler never reads them: sampled outputs made before they existed stay valid.
            sample.pop("onestep_t")
            sample.pop("onestep_draws")
        else:  # nor does the one-step output read the sampler's noise temperature
            sample.pop("noise_temperature")
        return {"sample": sample, "output": self.output}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decode(self, ids: Sequence[int]) -> DecodeResult:
        return self.tokenizer.decode(ids)

    def _encode_condition(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        m = self.vae.downsample * self.model.cfg.patch_size
        up = resize_bicubic(images.to(self.device).float(), size)
        return self.vae.encode(pad_to_multiple(up, m)).float()

    def edit(self, images: torch.Tensor, instructions: list[str], tasks: list[str],
             out_size: tuple[int, int], seed: int | Sequence[int]) -> torch.Tensor:
        """images (N, 3, h, w) in [0, 1] -> (N, 3, H, W) = out_size, in [0, 1]. The instruction
        selects the task (``tasks`` is what the data says it is; the model reads only the text).
        ``seed``: one int for the batch, or one per image (image i's noise then depends only on
        seed[i], so its output is the same in any batch, up to float reduction order).

        Any size: the condition (the input upsampled to ``out_size``) is encoded whole, the latent
        is generated tile by tile (``model.tile_size`` tiles overlapping by
        ``sample.tile_overlap``, each tile's velocity blended into the whole latent with a window
        at every step: ``TiledVelocity``), and the result is decoded whole. An image of one tile
        is one tile: exactly the untiled model."""
        if len(instructions) != images.shape[0]:
            raise ValueError(f"edit: {images.shape[0]} images but {len(instructions)} instructions")
        sc = self.sample_cfg
        H, W = int(out_size[0]), int(out_size[1])
        with _eval_mode(self.model):
            cond_img = self._condition_canvas(images, (H, W))
            cond = self.vae.encode(cond_img).float()
            n = cond.shape[0]
            draws = sc.onestep_draws if self.output == "onestep" else 1
            noise = _noise(cond.shape, seed, draws).to(self.device)
            velocity = self._tiled(cond, list(instructions))
            if self.output == "onestep":
                t = sc.onestep_t
                tb = torch.full((n,), t, device=self.device)
                x0_hat = torch.zeros_like(cond)
                for eps in noise:
                    x_t = (1 - t) * cond + t * eps
                    x0_hat += (x_t - t * velocity(x_t, tb)) / draws
                z = x0_hat
            else:
                uncond = self._tiled(cond, [""] * n) if sc.text_guidance > 1 else None
                z = euler_sample(velocity, noise[0] * sc.noise_temperature, steps=sc.steps,
                                 shift=sc.shift, uncond_velocity=uncond,
                                 guidance=sc.text_guidance)
            out = self.render(z, cond, cond_img)[..., :H, :W]
        return out.float().clamp(0, 1)

    def _condition_canvas(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The input upsampled to ``size`` (the bicubic baseline's image), zero-padded bottom/right
        to at least one tile and to whole latent pixels: (N, 3, H', W')."""
        up = resize_bicubic(images.to(self.device).float(), size)
        tile, f = self.model.cfg.tile_size, self.vae.downsample
        h, w = max(size[0], tile), max(size[1], tile)
        return torch.nn.functional.pad(up, (0, w + (-w % f) - size[1], 0, h + (-h % f) - size[0]))

    def render(self, z: torch.Tensor, cond: torch.Tensor, cond_img: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> images (N, 3, H, W), not clamped: ``decode(z)``, or with
        ``model.pixel_residual`` the residual over the condition image, ``cond_img + decode(z) -
        decode(cond)`` (the rendering the image-space losses train)."""
        out = self.vae.decode(z).float()
        if self.model.cfg.pixel_residual:
            out = cond_img + out - self.vae.decode(cond).float()
        return out

    def _tiled(self, cond: torch.Tensor, prompts: list[str]) -> "TiledVelocity":
        return TiledVelocity(self.model, self.tokenizer, cond, prompts,
                             tile=self.model.cfg.tile_size // self.vae.downsample,
                             overlap=self.sample_cfg.tile_overlap // self.vae.downsample,
                             batch=self.sample_cfg.tile_batch)

    def generate_report(self, images: torch.Tensor, prompts: list[str],
                        seed: int | Sequence[int]) -> list[list[int]]:
        """images (N, 3, H, W) -> one id list per image: greedy when ``temperature == 0``, else
        temperature + top-p sampling from a generator seeded with ``seed``. Generation runs over all
        ``vocab_padded`` rows of the text head, so undecodable ids are returned as emitted; each
        list
        stops after its first EOS (included) or at ``max_new_tokens``. ``seed``: one int, or one per
        image (each image then samples from its own generator)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(
                f"generate_report: {images.shape[0]} images but {len(prompts)} prompts"
            )
        cfg, sc, tok = self.model.cfg, self.sample_cfg, self.tokenizer
        size = (cfg.report_side, cfg.report_side)
        n = images.shape[0]
        if not isinstance(seed, (list, tuple)):
            gens = [torch.Generator().manual_seed(int(seed))]
        else:
            gens = [torch.Generator().manual_seed(int(s)) for s in _seed_list(seed, n)]
        out: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        with _eval_mode(self.model):
            cond = self._encode_condition(images, size)
            h, w = cond.shape[-2:]
            p = cfg.patch_size
            cond_tok = patchify(cond, p)
            # The prompt is the report question (role QUESTION): the context the report was
            # trained in.
            base = pack_text(tok, None, None, cfg.max_text_len, device=self.device,
                             questions=list(prompts))
            room = min(sc.max_new_tokens, 2 * cfg.max_text_len - base.ids.shape[1])
            # [cond | question, right-padded] once; then one token per step, attending to the
            # cache (the condition, its own question without the padding, its earlier tokens):
            # the same keys as the sequence with the report written into the padding.
            n_tok = cond_tok.shape[1]
            logits, cache, _ = self.model.prefix(
                base.ids, base.pos, sequence_mask(base, n_tok, 0), cond=cond_tok,
                grid=(h // p, w // p))
            rows = torch.arange(n, device=self.device)
            lengths = (base.roles != 0).sum(1)
            step_logits = logits[rows, lengths - 1]
            prefix_keys = torch.cat([torch.ones(n, n_tok, dtype=torch.bool, device=self.device),
                                     base.roles != 0], dim=1)
            for j in range(room):
                if sc.temperature == 0:
                    nxt = step_logits.argmax(-1)
                else:
                    nxt = top_p_sample(step_logits, sc.temperature, sc.top_p, gens[0]) \
                        if len(gens) == 1 else torch.cat([
                            top_p_sample(step_logits[i:i + 1], sc.temperature, sc.top_p, gens[i])
                            for i in range(n)])
                for i in range(n):
                    if not done[i]:
                        out[i].append(int(nxt[i]))
                        done[i] = out[i][-1] == tok.eos_id
                if all(done) or j == room - 1:
                    break
                mask = torch.cat([prefix_keys, torch.ones(n, j + 1, dtype=torch.bool,
                                                          device=self.device)], dim=1)[:, None]
                logits, cache = self.model.next_text(cache, nxt[:, None], (lengths + j)[:, None],
                                                     mask)
                step_logits = logits[:, 0]
        return out


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles that cover [0, length): evenly spread, each overlapping the next by at
    least ``overlap`` (all in latent pixels); one tile at 0 when ``length <= tile``."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_window(tile: int, ramp: int, first: bool, last: bool) -> torch.Tensor:
    """(tile,) blending weights of one tile along one axis: rising linearly over ``ramp`` pixels
    from a side that borders another tile, flat (1) towards the image's own edge (``first``: the
    tile starts at 0; ``last``: it ends at the edge), never 0 (every pixel is covered)."""
    i = torch.arange(tile, dtype=torch.float32) + 0.5
    w = torch.ones(tile)
    if ramp > 0:
        if not first:
            w = torch.minimum(w, i / ramp)
        if not last:
            w = torch.minimum(w, (tile - i) / ramp)
    return w.clamp_min(1e-3)


class TiledVelocity:
    """The model's velocity on a latent of any size (N, C, h, w), from ``tile`` x ``tile``
    latent tiles that overlap by ``overlap`` (MultiDiffusion, Bar-Tal et al. 2023): at each call
    every tile's velocity is computed (``batch`` tiles per forward) and blended into the whole
    latent with the ``tile_window`` weights. The condition's and the prompt's keys and values,
    and the condition's prior, are computed once per tile (``MiniBagel.prefix``) and reused at
    every call. A latent of one
    tile is one tile: the untiled velocity, bit for bit."""

    def __init__(self, model, tokenizer, cond: torch.Tensor, prompts: list[str], *, tile: int,
                 overlap: int, batch: int):
        self.model, self.p = model, model.cfg.patch_size
        self.tile = tile
        n, self.c, h, w = cond.shape
        ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
        self.places = [(i, y, x) for i in range(n) for y in ys for x in xs]
        wy = {y: tile_window(tile, overlap, y == ys[0], y == ys[-1]) for y in ys}
        wx = {x: tile_window(tile, overlap, x == xs[0], x == xs[-1]) for x in xs}
        self.windows = {(y, x): (wy[y][:, None] * wx[x][None, :]).to(cond.device)
                        for y in ys for x in xs}
        total = torch.zeros(h, w, device=cond.device)
        for (y, x), win in self.windows.items():
            total[y:y + tile, x:x + tile] += win
        self.total = total
        self.chunks = []
        for start in range(0, len(self.places), batch):
            places = self.places[start:start + batch]
            cond_tok = patchify(self._cut(cond, places), self.p)
            text = pack_text(tokenizer, [prompts[i] for i, _, _ in places], None,
                             model.cfg.max_text_len, device=cond.device)
            n_tok = cond_tok.shape[1]
            mask = sequence_mask(text, n_tok, n_tok)
            P = mask.shape[1] - n_tok
            _, cache, h_text = model.prefix(text.ids, text.pos, mask[:, :P, :P], cond=cond_tok,
                                            grid=self.grid)
            # The prior depends on the condition and the instruction only: once per tile.
            prior = (model.prior(cond_tok, self.grid, model.context(h_text, text.roles == PROMPT))
                     if model.prior_net is not None else None)
            self.chunks.append((places, cond_tok, cache, mask[:, P:], prior))

    @property
    def grid(self) -> tuple[int, int]:
        return self.tile // self.p, self.tile // self.p

    def _cut(self, z: torch.Tensor, places) -> torch.Tensor:
        t = self.tile
        return torch.stack([z[i, :, y:y + t, x:x + t] for i, y, x in places])

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (N, C, h, w) at timesteps t (N,) -> blended velocity (N, C, h, w)."""
        out = torch.zeros_like(x)
        k = self.tile
        for places, cond_tok, cache, mask, prior in self.chunks:
            idx = torch.tensor([i for i, _, _ in places], device=x.device)
            v = self.model.velocity(cache, mask, patchify(self._cut(x, places), self.p),
                                    t.index_select(0, idx), cond_tok, self.grid, prior)
            v = unpatchify(v, self.p, self.c, k, k)
            for j, (i, y, xx) in enumerate(places):
                out[i, :, y:y + k, xx:xx + k] += v[j] * self.windows[(y, xx)]
        return out / self.total


def _seed_list(seed: Sequence[int], n: int) -> list[int]:
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{n} images but {len(seeds)} seeds")
    return seeds


def _noise(shape: torch.Size, seed: int | Sequence[int], draws: int = 1) -> torch.Tensor:
    """Standard normal noise (draws, N, ...) for ``shape`` (N, ...): from one generator, or one
    per image. Draw 0 is the same whatever ``draws`` is (later draws continue the generator)."""
    if not isinstance(seed, (list, tuple)):
        return torch.randn((draws, *shape), generator=torch.Generator().manual_seed(int(seed)))
    return torch.stack([torch.randn((draws, *shape[1:]),
                                    generator=torch.Generator().manual_seed(s))
                        for s in _seed_list(seed, shape[0])], dim=1)
