"""A trained model from what training left: a run directory or a checkpoint, verified first.

    model, tokenizer, vae, report, info = load_for_inference("runs/ssim_v3-1a2b3c4d")

The checkpoint's files are checked against the sha256 recorded when they were written
(``medq.checkpoint.verify_checkpoint``) before any tensor is read, so a corrupted file is named
instead of loaded. Given a run directory, the newest checkpoint that verifies (at or before
``latest``) is used and each broken one is named in a warning; inference only reads, so it renames
nothing (the trainer sets a broken checkpoint aside when it resumes). Given a checkpoint directory,
a broken file is a ``CheckpointError``. The model is then built from the checkpoint's own
``config.toml`` and loaded strictly (``medq.models.load_model``).
"""

from __future__ import annotations

from pathlib import Path

from medq.checkpoint import (
    CheckpointError,
    is_complete,
    read_state,
    resolve_init,
    usable_checkpoint,
    verify_checkpoint,
)


def _vae_path(spec: str, run_dir: Path) -> Path:
    """``model.vae`` as written in the config (relative to the working directory at training time);
    from elsewhere, the same name next to the run directory (``runs/vae`` beside ``runs/<run>``)."""
    path = Path(spec)
    if path.is_absolute() or path.exists():
        return path
    beside = Path(run_dir).parent / path.name
    return beside if beside.exists() else path


def inference_checkpoint(run_or_ckpt_dir, weights: str = "ema") -> Path:
    """The verified checkpoint directory ``run_or_ckpt_dir`` means for inference: a run
    directory's newest checkpoint whose files verify (broken newer ones named in warnings, left in
    place), or the checkpoint directory itself (a preset name: the newest finished run's
    ``latest``, ``medq.checkpoint.resolve_init``). Raises CheckpointError naming the broken or
    missing file, FileNotFoundError when there is no checkpoint."""
    path = Path(run_or_ckpt_dir)
    required = (f"{weights}.safetensors", "arch.json", "tokenizer.json", "config.toml")
    if path.is_dir() and not is_complete(path) and (path / "checkpoints").is_dir():
        ckpt, broken = usable_checkpoint(path / "checkpoints", required, move_broken=False)
        if ckpt is not None:
            return ckpt
        if broken:
            raise CheckpointError(f"{path}: no checkpoint verifies ({broken[-1]})")
    ckpt = resolve_init(str(path), Path("."))
    verify_checkpoint(ckpt, required)
    return ckpt


def load_for_inference(run_or_ckpt_dir, weights: str = "ema", device="cpu"):
    """Load a trained mini-BAGEL for inference: ``(model, tokenizer, vae, report, info)``.

    ``run_or_ckpt_dir``: a run directory (its newest verified checkpoint, ``inference_checkpoint``)
    or a checkpoint directory (``.../checkpoints/step_000300``). ``weights``: "ema"
    (``ema.safetensors``, what inference normally uses) or "model" (the raw weights). The model is
    built from the checkpoint's own ``config.toml`` and loaded strictly (``medq.models.load_model``:
    raises ``CheckpointMismatchError`` listing missing / unexpected / shape-mismatched keys, or the
    architecture fields where ``arch.json`` and the config differ).

    Returns the model in eval mode on ``device``, its ``Tokenizer``, the frozen VAE (from
    ``model.vae`` of that config), the ``LoadReport`` and ``info`` = {"checkpoint", "run_dir",
    "run_name", "preset", "step", "weights", "fingerprint", "config" (a ``medq.config.Config``)}."""
    from medq import models as M
    from medq.config import load_config

    if weights not in ("ema", "model"):
        raise ValueError(f"weights = {weights!r}: expected 'ema' or 'model'")
    ckpt = inference_checkpoint(run_or_ckpt_dir, weights)
    cfg = load_config(str(ckpt / "config.toml"))
    model, tokenizer, report = M.load_model(ckpt, weights_file=f"{weights}.safetensors",
                                            expect_arch=cfg.model, tile_size=cfg.model.tile_size)
    run_dir = ckpt.parent.parent
    vae = M.load_vae(_vae_path(cfg.model.vae, run_dir)).to(device).eval().requires_grad_(False)
    info = {"checkpoint": ckpt, "run_dir": run_dir, "run_name": run_dir.name,
            "preset": cfg.run.preset, "step": read_state(ckpt)["step"], "weights": weights,
            "fingerprint": report.fingerprint, "config": cfg}
    return model.to(device).eval(), tokenizer, vae, report, info
