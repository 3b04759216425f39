"""The tiny mini-BAGEL geometry the model tests build in milliseconds.

    cfg = tiny_model_config(pixel_residual=False)     # a ModelConfig; conftest's ``vae`` fixture
                                                      # builds an untrained VAE of it
"""

from __future__ import annotations

from medq.config import ModelConfig


def tiny_model_config(**changes) -> ModelConfig:
    """``ModelConfig`` with one 32-px tile, width 32, two layers of two heads and 24 text
    positions, plus ``changes``."""
    return ModelConfig(tile_size=32, d_model=32, n_layers=2, n_heads=2, max_text_len=24,
                       vocab_pad_multiple=16, **changes)
