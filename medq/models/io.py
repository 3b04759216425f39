"""Saving and strictly loading the mini-BAGEL: weights, architecture and tokenizer together.

    save_model(model, tokenizer, d)        # d/model.safetensors, d/arch.json, d/tokenizer.json
    model, tok, report = load_model(d)     # report: LoadReport (weights, source, fingerprint)

Loading never uses ``strict=False`` silently (the SSIM v2 run trained from scratch because a
missing checkpoint went unnoticed): ``load_state_verified`` compares key sets and shapes first and
raises ``CheckpointMismatchError`` listing every missing, unexpected and shape-mismatched key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medq.config import ModelConfig

ARCH_FILE = "arch.json"
TOKENIZER_FILE = "tokenizer.json"
ARCH_FIELDS = ("vae_downsample", "latent_channels", "patch_size", "d_model", "n_layers", "n_heads",
               "mlp_ratio", "max_text_len", "vocab_pad_multiple", "cond_at_gen",
               "cond_prior", "prior_conv_channels", "prior_conv_layers", "out_conv")
"""ModelConfig fields that define the transformer's parameters and sequence layout. ``tile_size``,
``vae`` and ``pixel_residual`` are not among them: the same weights run at any multiple of the
patch grid, with any compatible VAE, rendered either way."""
ADDED_ARCH_FIELDS = {"prior_conv_channels": 0, "prior_conv_layers": 4, "out_conv": False}
"""Architecture fields added after weights were shipped, with the value every model written before
them had: an ``arch.json`` without one of them describes that value, not an unknown one."""


class CheckpointMismatchError(RuntimeError):
    """Weights do not fit the model (missing / unexpected / shape-mismatched keys) or an
    ``arch.json`` differs from the expected architecture; the message lists what differs and
    the full lists are attributes (``missing``, ``unexpected``, ``mismatched``)."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = (
            list(missing),
            list(unexpected),
            list(mismatched),
        )


@dataclass
class LoadReport:
    """What a load actually did. ``weights``: which weights were used (``ema`` / ``model`` /
    ``vae`` / ...); ``fingerprint``: sha256 (16 hex) over sorted key names and tensor bytes."""

    source: str
    weights: str
    fingerprint: str
    n_tensors: int
    n_params: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted key names, dtypes, shapes and raw bytes of each tensor; first 16 hex
    digits. The one fingerprint of weights everywhere (``medq.checkpoint`` re-exports this
    function): init.json, the logs, the reports and the end-of-run check that ranks agree."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _listing(name: str, keys: list[str], limit: int = 20) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{name} ({len(keys)}): {', '.join(keys[:limit])}{more}"


def load_state_verified(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *,
                        source: str = "<state dict>", weights: str = "model") -> LoadReport:
    """Load ``state_dict`` into ``model`` only if keys and shapes match exactly; else raise
    ``CheckpointMismatchError`` naming the missing, unexpected and shape-mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = [_listing(n, ks) for n, ks in (("missing", missing), ("unexpected", unexpected),
                                               ("shape-mismatched", mismatched)) if ks]
        raise CheckpointMismatchError(f"{source}: the weights do not fit {type(model).__name__}: "
                                      + "; ".join(parts), missing, unexpected, mismatched)
    model.load_state_dict(state_dict, strict=True)
    return LoadReport(
        source=source,
        weights=weights,
        fingerprint=fingerprint(state_dict),
        n_tensors=len(state_dict),
        n_params=sum(int(v.numel()) for v in state_dict.values()),
    )


def arch_dict(cfg: ModelConfig, vocab_size: int) -> dict:
    """The architecture-defining fields of ``cfg`` plus the tokenizer's vocabulary size."""
    return {**{k: getattr(cfg, k) for k in ARCH_FIELDS}, "vocab_size": vocab_size}


def check_arch(found: dict, expected: dict, where: str) -> None:
    """Raise ``CheckpointMismatchError`` naming every field where ``found`` != ``expected``."""
    diff = [f"{k}: file {found.get(k, '<absent>')!r} vs expected {expected.get(k, '<absent>')!r}"
            for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]
    if diff:
        raise CheckpointMismatchError(
            f"{where}: architecture differs from the expected one: " + "; ".join(diff)
        )


def save_model(model, tokenizer, directory: str | Path, *, filename: str = "model.safetensors",
               state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``filename`` (safetensors), ``arch.json`` and ``tokenizer.json`` into ``directory``.

    ``state``: the weights to write instead of ``model.state_dict()``, with its keys, e.g. the full
    tensors gathered from an FSDP-sharded model (whose own state dict holds only shards)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, str(d / filename))
    (d / ARCH_FILE).write_text(json.dumps(arch_dict(model.cfg, tokenizer.vocab_size), indent=1))
    tokenizer.save(d / TOKENIZER_FILE)
    return d / filename


def load_model(directory: str | Path, *, weights_file: str = "model.safetensors",
               expect_arch: ModelConfig | None = None, tile_size: int | None = None):
    """``(MiniBagel, Tokenizer, LoadReport)`` from a directory written by ``save_model``.

    ``expect_arch``: the ModelConfig the caller expects; an ``arch.json`` that differs in any
    architecture field is a ``CheckpointMismatchError`` naming the fields. ``weights_file``
    ``ema.safetensors`` loads the EMA weights (recorded in the report as ``ema``)."""
    from medq.models.tokenizer import Tokenizer
    from medq.models.transformer import MiniBagel

    d = Path(directory)
    for name in (ARCH_FILE, TOKENIZER_FILE, weights_file):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: no {name} (expected a directory written by save_model)")
    found = {**ADDED_ARCH_FIELDS, **json.loads((d / ARCH_FILE).read_text())}
    tokenizer = Tokenizer.load(d / TOKENIZER_FILE)
    if found.get("vocab_size") != tokenizer.vocab_size:
        raise CheckpointMismatchError(f"{d}: arch.json vocab_size {found.get('vocab_size')} != "
                                      f"{TOKENIZER_FILE} size {tokenizer.vocab_size}")
    if expect_arch is not None:
        check_arch(found, arch_dict(expect_arch, tokenizer.vocab_size), str(d / ARCH_FILE))
    unknown = set(found) - set(ARCH_FIELDS) - {"vocab_size"}
    if unknown:
        raise CheckpointMismatchError(f"{d / ARCH_FILE}: unknown fields {sorted(unknown)}")
    base = expect_arch if expect_arch is not None else ModelConfig()
    kwargs = {k: found[k] for k in ARCH_FIELDS if k in found}
    if tile_size is not None:
        kwargs["tile_size"] = tile_size
    cfg = dataclasses.replace(base, **kwargs)
    model = MiniBagel(cfg, tokenizer.vocab_size)
    weights = "ema" if "ema" in weights_file else "model"
    report = load_state_verified(
        model, read_weights(d / weights_file), source=str(d / weights_file), weights=weights
    )
    return model, tokenizer, report


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or foreign file is a
    ``CheckpointMismatchError`` naming it (safetensors' own error names neither file nor cause)."""
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: what the file is
        raise CheckpointMismatchError(f"{path}: not a readable safetensors file (truncated, empty "
                                      f"or another format): {e}") from None
