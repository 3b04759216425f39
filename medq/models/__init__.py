"""The mini-BAGEL: a small unified text + image model with BAGEL's structure and interfaces.

    vae.py         ``SmallVAE`` / diffusers ``AutoencoderKL`` wrapper, ``build_vae``, ``load_vae``
    vae_train.py   training our VAE (``python -m train vae``)
    tokenizer.py   word-level ``Tokenizer`` (padded text head -> undecodable ids are possible)
    sequence.py    packed text and the block attention mask
    transformer.py ``MiniBagel``: one transformer, text head + zero-initialised flow head
    flow.py        rectified flow (t = 0 clean): timesteps, noising, Euler sampler with CFG
    forward.py     ``training_forward`` -> ``TrainForward`` (consumed by ``medq.losses``)
    adapter.py     ``MiniBagelAdapter`` (``medq.protocol.ImageTextModel``)
    io.py          ``save_model`` / ``load_model`` / ``load_state_verified`` / ``LoadReport``
"""

from medq.models.adapter import MiniBagelAdapter
from medq.models.flow import (
                            add_noise,
                            euler_sample,
                            sample_timesteps,
                            sampling_schedule,
                            shift_timesteps,
)
from medq.models.forward import TrainForward, training_forward
from medq.models.io import (
                            CheckpointMismatchError,
                            LoadReport,
                            fingerprint,
                            load_model,
                            load_state_verified,
                            save_model,
)
from medq.models.tokenizer import Tokenizer, padded_vocab_size
from medq.models.transformer import MiniBagel, patchify, unpatchify
from medq.models.vae import DiffusersVAE, SmallVAE, build_vae, load_vae, save_vae

__all__ = ["MiniBagelAdapter", "add_noise", "euler_sample", "sample_timesteps", "sampling_schedule",
           "shift_timesteps", "TrainForward", "training_forward", "CheckpointMismatchError",
           "LoadReport", "fingerprint", "load_model", "load_state_verified", "save_model",
           "Tokenizer", "padded_vocab_size", "MiniBagel", "patchify", "unpatchify", "DiffusersVAE",
           "SmallVAE", "build_vae", "load_vae", "save_vae"]
