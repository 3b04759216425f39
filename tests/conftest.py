"""Shared test fixtures: the real fundus samples next to the checkout (or at
``$MEDQ_FUNDUS_SAMPLES``), skipped when absent."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUNDUS_SAMPLES = Path(os.environ.get("MEDQ_FUNDUS_SAMPLES", REPO.parent / "shared" / "fundus-samples"))


@pytest.fixture
def fundus_samples() -> Path:
    """``../shared/fundus-samples`` (eyeq/original_img/*.jpeg, eyeq/Label_EyeQ_train.head.csv,
    drive/images/*.tif, drive/mask/*.gif). Research-licensed: read them, never copy them."""
    if not FUNDUS_SAMPLES.is_dir():
        pytest.skip(f"real fundus samples not present at {FUNDUS_SAMPLES}")
    return FUNDUS_SAMPLES
