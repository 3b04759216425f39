"""Typed configuration: one dataclass per concern, TOML presets, dotted overrides, a stable hash.

The dataclass defaults below ARE the ``control`` preset (a fine-tune of the base model, the shipped
``weights/base``, with CE + latent MSE and no image loss). A preset in ``configs/<name>.toml``
states only what differs from it; overlays such as ``configs/model/small.toml`` are applied the
same way. "Base" means one thing: the base model that every fine-tune starts from (``pretrain``
trains one; ``make check-weights`` verifies the shipped one). Every value lives in exactly one
place: derived values (``LossConfig.needs_vae``) are properties, never fields.

    cfg = load_config("ssim_v3", overrides=["loss.ssim_weight=0.2"])
    cfg.run_name        # 'ssim_v3-1a2b3c4d': preset + short hash of every value
    dump_toml(cfg)      # the resolved config, as written into the run directory

Errors name the key, the value and the rule (``ConfigError``); each section checks itself when
it is made, so ``LossConfig(ssim_weight=-1)`` is refused on its own.

The hash covers every value, defaults included: adding a field changes every run's hash, so a
run made before starts anew in another directory. ``python -m train`` then names the older run
of the same preset and the keys that differ (``older_runs``, ``config_changes``).
Modules: ``checks`` (the error and the checks every section runs), ``sections`` (the
dataclasses and ``Config`` with its hash), ``loading`` (files, overrides, presets, TOML). Import
from here.
"""

from __future__ import annotations

from medq.config.checks import (  # noqa: F401 (re-exported)
    FLOAT_LIMIT,
    INT_RANGE,
    SEED_RANGE,
    ConfigError,
    Task,
)
from medq.config.loading import (  # noqa: F401 (re-exported)
    CONFIG_DIR,
    CONTROL,
    RENAMED_KEYS,
    RENAMED_PRESETS,
    available_presets,
    config_changes,
    dump_toml,
    from_dict,
    load_config,
    merge,
    older_runs,
    parse_override,
    with_overrides,
)
from medq.config.sections import (  # noqa: F401 (re-exported)
    NOT_HASHED,
    SECTIONS,
    Config,
    DataConfig,
    InitConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SampleConfig,
    to_dict,
)
