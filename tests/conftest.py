"""Shared test fixtures.

- ``fundus_samples``: the real fundus samples next to the checkout (or at
  ``$MEDQ_FUNDUS_SAMPLES``), skipped when absent.
- ``tiny_overrides`` / ``tiny``: the tiny mini-BAGEL of ``configs/tiny.toml`` as ``--set``
  overrides, with an untrained VAE of its geometry (made once per session); ``tiny`` adds a run
  directory and data cache in the test's ``tmp_path``.
- ``vae``: an untrained, frozen VAE (8 channels) of the requesting module's ``cfg`` fixture (a
  ``ModelConfig``).
- ``server``: the demo app on a fake runs/ tree, launched on a free localhost port (one per test
  module: test_demo.py and test_demo_browser.py).

Helpers that are not fixtures live in ``tests/fakes/`` (not collected by pytest).
"""

import json
import tomllib
from pathlib import Path

import pytest

from fakes import FUNDUS_SAMPLES, REPO

TINY_TOML = REPO / "configs" / "tiny.toml"


@pytest.fixture
def fundus_samples() -> Path:
    """``../shared/fundus-samples`` (eyeq/original_img/*.jpeg, eyeq/Label_EyeQ_train.head.csv,
    drive/images/*.tif, drive/mask/*.gif). Research-licensed: read them, never copy them."""
    if not FUNDUS_SAMPLES.is_dir():
        pytest.skip(f"real fundus samples not present at {FUNDUS_SAMPLES}")
    return FUNDUS_SAMPLES


def toml_overrides(path: Path) -> list[str]:
    """A config TOML file as ``section.key=value`` overrides (for ``--set`` and ``load_config``)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [f"{section}.{key}={json.dumps(value)}" for section, values in data.items()
            for key, value in values.items()]


@pytest.fixture(scope="session")
def tiny_overrides(tmp_path_factory) -> list[str]:
    """``configs/tiny.toml`` plus ``model.vae`` = an untrained VAE of its geometry."""
    from medq.config import load_config
    from medq.models import build_vae, save_vae

    tiny = toml_overrides(TINY_TOML)
    vae = tmp_path_factory.mktemp("tiny_vae") / "vae"
    save_vae(build_vae(load_config("control", overlays=[str(TINY_TOML)]).model, channels=8), vae)
    return tiny + [f"model.vae={json.dumps(str(vae))}"]


@pytest.fixture
def tiny(tmp_path, tiny_overrides) -> list[str]:
    """``tiny_overrides`` writing runs to ``tmp_path/runs`` and the data cache to
    ``tmp_path/cache``."""
    return tiny_overrides + [f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}",
                             f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}"]


@pytest.fixture
def vae(cfg):
    """An untrained VAE of the geometry of ``cfg`` (the module's tiny ``ModelConfig`` fixture),
    8 channels, frozen."""
    from medq.models import build_vae

    return build_vae(cfg, channels=8).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``fakes.demo.served_demo``: {"url", "root", "runs", "run"} of the launched demo app."""
    from fakes.demo import served_demo

    with served_demo(tmp_path_factory.mktemp("served")) as served:
        yield served
