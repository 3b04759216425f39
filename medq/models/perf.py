"""Step time of the mini-BAGEL alone (no data loading, no image-space loss, untrained VAE).

    python -c "import json; from medq.models.perf import step_time; print(json.dumps(step_time(), indent=1))"

One step = ``training_forward`` (frozen-VAE encode of target and condition included) + CE + MSE +
backward + AdamW, on random 64 px images, median over ``steps`` after two warm-up steps. The
VAE decode of the image-space losses is excluded (``bench perf train`` measures whole presets).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from medq.config import ModelConfig

_INSTR = "super-resolve this fundus image x4"
_REPORT = "image quality is good. diabetic retinopathy grade 2, moderate non-proliferative retinopathy."


def step_time(cfg: ModelConfig | None = None, batch_size: int = 16, steps: int = 5, threads: int = 0,
              seed: int = 0) -> dict:
    """{"params", "params_text_head", "vocab", "seq_len", "step_s_median", "step_s_min",
    "encode_s_median", "threads", "batch_size", "image_size"} for one training step."""
    from medq.models import MiniBagel, Tokenizer, build_vae, training_forward

    cfg = cfg or ModelConfig()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        tok = Tokenizer()
    except ImportError:
        tok = Tokenizer([_INSTR, _REPORT])
    model = MiniBagel(cfg, tok.vocab_size)
    vae = build_vae(cfg).eval().requires_grad_(False)
    s = cfg.image_size
    target = torch.rand(batch_size, 3, s, s)
    batch = {"input": target[:, :, ::4, ::4].contiguous(), "target": target,
             "instruction": [_INSTR] * batch_size, "report": [_REPORT] * batch_size,
             "input_size": torch.tensor([[s // 4, s // 4]] * batch_size),
             "target_size": torch.tensor([[s, s]] * batch_size)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    times, enc, seq = [], [], 0
    for i in range(steps + 2):
        t0 = time.perf_counter()
        fwd = training_forward(model, vae, tok, batch, timestep_shift=1.0, generator=gen)
        loss = F.cross_entropy(fwd.text_logits.flatten(0, 1).float(), fwd.text_targets.flatten(),
                               ignore_index=-100) + F.mse_loss(fwd.v_hat, fwd.v_target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            vae.encode(target)
            vae.encode(target)
        if i >= 2:
            times.append(dt)
            enc.append(time.perf_counter() - t1)
        seq = fwd.hidden.shape[1]
    return {"params": model.num_parameters(), "params_text_head": model.text_head.weight.numel(),
            "vae_params": sum(p.numel() for p in vae.parameters()),
            "vocab": tok.vocab_size, "vocab_padded": model.vocab_padded, "seq_len": seq,
            "step_s_median": round(statistics.median(times), 4), "step_s_min": round(min(times), 4),
            "vae_encode_s_median": round(statistics.median(enc), 4),
            "threads": torch.get_num_threads(), "batch_size": batch_size, "image_size": s}
