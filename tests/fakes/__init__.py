"""Helpers the tests share, kept out of pytest's collection (no ``test_`` prefix). Test modules
import only from here and conftest.py (fixtures), never from each other (test_architecture.py).

    fakes.infer          small ImageTextModels and data items for the harness (no trained model)
    fakes.demo           a runs/ + reports/ tree as ``make eval`` writes it, fake models, the
                         launched demo (``served_demo``; conftest's ``server`` fixture)
    fakes.images         a synthetic fundus-like disc, hand-written PNG / TIFF headers, the image
                         file corpus every reader is tested with (``image_corpus``), pictures that
                         are not fundus photographs (``not_fundus_corpus``)
    fakes.training       a tiny ``train.loop.Task`` and its config (no medq.models, no data)
    fakes.models         the tiny mini-BAGEL geometry of the model tests (``tiny_model_config``)
    fakes.chaos_worker   the fork server of trainers that tests/test_chaos.py kills
    fakes.cli            running a stage's ``main`` and reading its one-line refusal (exit 2)
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FUNDUS_SAMPLES = Path(
    os.environ.get("MEDQ_FUNDUS_SAMPLES", REPO.parent / "shared" / "fundus-samples")
)
"""The real fundus samples next to the checkout (``../shared/fundus-samples``) or at
``$MEDQ_FUNDUS_SAMPLES``; research-licensed, read and never copied. The ``fundus_samples``
fixture (conftest.py) skips when they are absent."""
