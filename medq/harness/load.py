"""Where the model comes from: our run's checkpoint, a baseline, or any class by dotted path.

    model, meta = load_run("runs/ssim_v3-1a2b3c4d", weights="ema", checkpoint="step_300")
    model = load_class("my_pkg.wrap:BagelWrapper", ["ckpt=/models/bagel", "steps=50"])
    model = load_baseline("bicubic")

Every failure is an ``InferError`` naming what was asked for and what is expected.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Sequence

from medq.baselines import BASELINES
from medq.harness.text import InferError
from medq.protocol import ImageTextModel

PROTOCOL_ATTRS = ("name", "vocab_size", "edit", "generate_report", "decode")


def parse_model_args(pairs: list[str]) -> dict:
    """``["steps=50", "name=x", "cfg=[1,2]"]`` -> kwargs; values are TOML literals, else strings."""
    out = {}
    for text in pairs:
        if "=" not in text:
            raise InferError(f"--model-arg {text!r}: expected key=value")
        key, raw = (s.strip() for s in text.split("=", 1))
        if not key.isidentifier():
            raise InferError(f"--model-arg {text!r}: {key!r} is not a valid argument name")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


def check_protocol(model, where: str) -> ImageTextModel:
    """``model`` if it has every attribute of ``medq.protocol.ImageTextModel`` and its methods are
    callable, else ``InferError`` naming ``where`` and what is missing. The one protocol check
    (loading by class name, ``run_harness``, ``edit_one``)."""
    missing = [a for a in PROTOCOL_ATTRS if not hasattr(model, a)]
    not_callable = [a for a in ("edit", "generate_report", "decode")
                    if hasattr(model, a) and not callable(getattr(model, a))]
    if missing or not_callable:
        raise InferError(f"{where} does not satisfy medq.protocol.ImageTextModel: "
                         + "; ".join(filter(None, [
                             f"missing {', '.join(missing)}" if missing else "",
                             f"not callable: {', '.join(not_callable)}" if not_callable else ""])))
    return model


def load_class(spec: str, model_args: list[str] = ()) -> ImageTextModel:
    """Import ``module:Class`` (or ``module.Class``), instantiate it with ``model_args`` and check
    it satisfies the protocol."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    elif "." in spec:
        module_name, _, attr = spec.rpartition(".")
    else:
        raise InferError(f"--model {spec!r}: expected module:Class, e.g. my_pkg.wrap:BagelWrapper")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise InferError(f"--model {spec!r}: cannot import module {module_name!r} ({e}); is it on "
                         f"PYTHONPATH?") from e
    except Exception as e:  # noqa: BLE001 - a user's module failing at import time, whatever the cause
        raise InferError(f"--model {spec!r}: importing {module_name!r} failed: "
                         f"{type(e).__name__}: {e}") from e
    cls = module
    for part in attr.split("."):
        if not hasattr(cls, part):
            names = sorted(n for n in dir(module) if not n.startswith("_"))
            raise InferError(f"--model {spec!r}: module {module_name!r} has no {attr!r} "
                             f"(it defines: {', '.join(names) or 'nothing public'})")
        cls = getattr(cls, part)
    if not callable(cls):
        raise InferError(f"--model {spec!r}: {attr!r} is not a class or factory")
    kwargs = parse_model_args(list(model_args))
    try:
        model = cls(**kwargs)
    except TypeError as e:
        raise InferError(f"--model {spec!r}: cannot construct it with {kwargs}: {e}") from e
    return check_protocol(model, f"--model {spec!r}")


def model_dir_name(name: str) -> str:
    """A model's name as one folder name (``org/model@v1`` -> ``org_model_v1``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip(".") or "model"


def load_baseline(name: str) -> ImageTextModel:
    if name not in BASELINES:
        raise InferError(f"--baseline {name!r}: expected one of {', '.join(BASELINES)}")
    return BASELINES[name]()


def checkpoint_dir(run: Path, checkpoint: str | None) -> Path:
    """``run`` itself when no checkpoint is named; else ``run/checkpoints/<step_N>`` (N zero-padded
    as the trainer writes it; ``step_300`` and ``step_000300`` are the same)."""
    run = Path(run)
    if not run.exists():
        raise InferError(f"--run {run}: no such directory")
    if checkpoint is None:
        return run
    m = re.fullmatch(r"step_(\d+)", checkpoint)
    if not m:
        raise InferError(f"--checkpoint {checkpoint!r}: expected step_N, e.g. step_300")
    ckpt = run / "checkpoints" / f"step_{int(m.group(1)):06d}"
    if not ckpt.is_dir():
        have = sorted(p.name for p in (run / "checkpoints").glob("step_*")) \
            if (run / "checkpoints").is_dir() else []
        raise InferError(f"--checkpoint {checkpoint}: no {ckpt} (available: "
                         f"{', '.join(have) or 'none'})")
    return ckpt


def load_run(run, *, weights: str = "ema", checkpoint: str | None = None, device="cpu",
             output: str = "sample", overrides: Sequence[str] = ()):
    """Our mini-BAGEL from a run / checkpoint, strictly verified (``medq.run_loading.
    load_for_inference``), wrapped as ``MiniBagelAdapter``. Returns (model, meta, info) where
    meta = {"run", "checkpoint", "weights"} for the records and info is load_for_inference's, its
    "config" the checkpoint's config with ``overrides`` applied.

    ``overrides``: ``section.key=value`` strings (``--set``) applied here, once, to the
    checkpoint's own config: ``sample.*`` reach the sampler; ``model.*`` are refused (the
    architecture is the checkpoint's). This is the one place a run's adapter is built; a caller
    that wants other sample settings asks the adapter for a copy (``model.with_sample``).
    ``output``: "sample" (the Euler sampler) or "onestep" (the x0 prediction from the noised
    condition; the model's name then ends in ``/onestep``), see ``MiniBagelAdapter``."""
    from medq.config import ConfigError, with_overrides
    from medq.run_loading import load_for_inference

    arch = [o for o in overrides if o.split("=", 1)[0].strip().startswith("model.")]
    if arch:
        raise InferError(f"--set {arch[0]}: the architecture of --run comes from its checkpoint "
                         f"and cannot be overridden")
    target = checkpoint_dir(Path(run), checkpoint)
    try:
        net, tokenizer, vae, report, info = load_for_inference(
            target, weights=weights, device=device
        )
        from medq.models import MiniBagelAdapter
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError, ImportError) as e:
        # CheckpointMismatchError (missing / unexpected / mis-shaped keys), a config that does not
        # match the weights, a missing VAE: the message already names what is wrong.
        raise InferError(f"--run {run}: cannot load {weights} weights from {target}: "
                         f"{type(e).__name__}: {e}") from e
    try:
        cfg = with_overrides(info["config"], list(overrides))
    except ConfigError as e:
        raise InferError(f"--run {run}: {e}") from e
    suffix = "" if output == "sample" else f"/{output}"
    model = MiniBagelAdapter(net, vae, tokenizer, cfg.sample, output=output,
                             name=f"{info['run_name']}@{info['checkpoint'].name}/{weights}{suffix}")
    meta = {"run": info["run_name"], "checkpoint": info["checkpoint"].name, "weights": weights}
    return model, meta, {**info, "config": cfg, "load_report": report}
