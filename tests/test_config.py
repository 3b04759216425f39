"""Config: presets, overrides, errors that name key/value/rule, the derived VAE flag, the hash."""

import dataclasses
import json

import pytest

from medq.config import (
    NOT_HASHED,
    Config,
    ConfigError,
    DataConfig,
    InitConfig,
    LossConfig,
    OptimConfig,
    available_presets,
    dump_toml,
    load_config,
    to_dict,
)

PRESETS = ["pretrain", "pixel", "ssim_v1", "ssim_v2", "ssim_v2_as_run", "ssim_v3",
           "ssim_v3_relaxed", "mixed"]

# docs/BACKGROUND.md, the failure table: (weight, max_t, grad scale, init from EMA)
SSIM_TABLE = {
    "ssim_v1": (1.0, 0.3, 1.0, True),
    "ssim_v2": (0.1, 0.1, 0.1, True),
    "ssim_v2_as_run": (1.0, 0.3, 0.01, False),
    "ssim_v3": (0.1, 0.1, 0.01, True),
    "ssim_v3_relaxed": (0.2, 0.15, 0.01, True),
    "mixed": (0.1, 0.1, 0.01, True),
}


def test_every_shipped_preset_is_known_and_loads():
    assert set(PRESETS) <= set(available_presets())
    for name in available_presets():
        cfg = load_config(name)
        assert cfg.run.preset == name
        assert cfg.run_name.startswith(f"{name}-") and len(cfg.run_name) == len(name) + 9


@pytest.mark.parametrize("name", list(SSIM_TABLE))
def test_ssim_presets_have_the_values_of_the_design_table(name):
    weight, max_t, scale, from_ema = SSIM_TABLE[name]
    cfg = load_config(name)
    assert (cfg.loss.ssim_weight, cfg.loss.ssim_max_t, cfg.loss.ssim_grad_scale) == (
        weight,
        max_t,
        scale,
    )
    if from_ema:
        assert (
            cfg.init.from_ == "weights/base" and cfg.init.weights == "ema" and not cfg.init.scratch
        )
    else:  # the v2 accident: pretrained weights never loaded
        assert cfg.init.scratch and cfg.init.from_ == ""


def test_mixed_is_pixel_term_plus_v3_ssim_term():
    mixed, pixel, v3 = (
        load_config("mixed").loss,
        load_config("pixel").loss,
        load_config("ssim_v3").loss,
    )
    assert (mixed.pixel_weight, mixed.pixel_kind, mixed.pixel_max_t) == \
        (pixel.pixel_weight, pixel.pixel_kind, pixel.pixel_max_t)
    assert (mixed.ssim_weight, mixed.ssim_max_t, mixed.ssim_grad_scale) == \
        (v3.ssim_weight, v3.ssim_max_t, v3.ssim_grad_scale)
    assert pixel.ssim_weight == 0 and v3.pixel_weight == 0


@pytest.mark.parametrize("name", PRESETS)
def test_vae_in_graph_is_derived_from_the_weights(name):
    cfg = load_config(name)
    assert cfg.loss.needs_vae == (cfg.loss.pixel_weight > 0 or cfg.loss.ssim_weight > 0)
    # the v1 crash: an SSIM-only config must attach the decoder
    expected = name != "pretrain"
    assert cfg.loss.needs_vae is expected
    assert "needs_vae" not in to_dict(cfg)["loss"], "derived values are not configurable"


def test_round_trip_load_override_dump_load(tmp_path):
    cfg = load_config("ssim_v3", overrides=["loss.ssim_weight=0.2", "data.tasks=['sr4']",
                                             "init.from=runs/x"])
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg))
    again = load_config(str(path))
    assert again == cfg
    assert again.hash == cfg.hash and again.run_name == cfg.run_name
    assert (
        again.loss.ssim_weight == 0.2
        and again.data.tasks == ["sr4"]
        and again.init.from_ == "runs/x"
    )


def test_override_types_are_coerced_and_bare_words_are_strings():
    cfg = load_config(
        "pixel", overrides=["loss.pixel_weight=2", "data.source=folder", "data.root=/x"]
    )
    assert cfg.loss.pixel_weight == 2.0 and isinstance(cfg.loss.pixel_weight, float)
    assert cfg.data.source == "folder"


def test_unknown_key_names_key_and_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown key 'loss.ssim_wieght'.*'loss.ssim_weight'"):
        load_config("ssim_v3", overrides=["loss.ssim_wieght=0.2"])
    with pytest.raises(ConfigError, match=r"unknown section 'los'.*'loss'"):
        load_config("ssim_v3", overrides=["los.ssim_weight=0.2"])


def test_unknown_key_in_a_preset_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nmax_step = 10\n")
    with pytest.raises(
        ConfigError, match=r"bad.toml.*unknown key 'optim.max_step'.*'optim.max_steps'"
    ):
        load_config(str(bad))
    bad.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.learning_rate'; valid: optim.lr, "):
        load_config(str(bad))


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown preset 'ssim_v4'.*did you mean"):
        load_config("ssim_v4")


@pytest.mark.parametrize("override, message", [
    ("loss.ssim_weight='a'", r"loss.ssim_weight = 'a': expected float, got str"),
    ("loss.ssim_masked=1", r"loss.ssim_masked = 1: expected true or false"),
    ("optim.max_steps=1.5", r"optim.max_steps = 1.5: expected int"),
])
def test_wrong_type_names_key_value_and_expected_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("ssim_v3", overrides=[override])


@pytest.mark.parametrize("override, rule", [
    ("loss.ssim_weight=-0.1", "loss weights must be >= 0"),
    ("loss.pixel_weight=-1", "loss weights must be >= 0"),
    ("loss.ssim_max_t=0", r"must be in \(0, 1\]"),
    ("loss.ssim_max_t=1.5", r"must be in \(0, 1\]"),
    ("loss.ssim_window=4", "must be odd and >= 3"),
    ("loss.ssim_window=1", "must be odd and >= 3"),
    ("loss.ssim_grad_scale=0", "must be > 0"),
    ("loss.ssim_grad_clamp=-1", "must be > 0, or 0 for off"),
])
def test_out_of_range_values_name_key_value_and_rule(override, rule):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key} = .*: {rule}"):
        load_config("ssim_v3", overrides=[override])


def test_scratch_must_be_stated_and_excludes_a_checkpoint():
    with pytest.raises(ConfigError, match="init.scratch = False: init.from is empty.*v2 accident"):
        load_config("ssim_v3", overrides=["init.from=''"])
    with pytest.raises(
        ConfigError, match="init.from = 'weights/base': must be empty when init.scratch"
    ):
        load_config("ssim_v3", overrides=["init.scratch=true"])


def test_hash_is_stable_and_changes_with_every_value():
    base = load_config("ssim_v3")
    assert load_config("ssim_v3").hash == base.hash
    d = to_dict(base)
    changed = 0
    for section, values in d.items():
        for key, value in values.items():
            if (section, key) in NOT_HASHED:
                # where a run is written / how it is spread over ranks / which x0 prediction the
                # one-step output reads at inference: not what training computes
                continue
            if isinstance(value, bool):
                new = not value
            elif isinstance(value, (int, float)):
                new = value + 1 if isinstance(value, int) else value * 0.5 + 0.01
            elif isinstance(value, str):
                new = value + "x"
            else:
                new = value[:1] if len(value) > 1 else value * 2
            patched = {s: dict(v) for s, v in d.items()}
            patched[section][key] = new
            try:
                other = Config.__new__(Config)
                from medq.config import from_dict
                other = from_dict(patched)
            except ConfigError:
                continue  # the new value is invalid for this key; covered by the range tests
            assert other.hash != base.hash, f"{section}.{key} does not enter the hash"
            changed += 1
    assert changed > 40


def test_not_hashed_values_leave_the_hash_alone():
    base = load_config("ssim_v3")
    assert load_config("ssim_v3", overrides=["sample.onestep_t=1.0"]).hash == base.hash
    assert load_config("ssim_v3", overrides=["sample.onestep_draws=8"]).hash == base.hash
    assert load_config("ssim_v3", overrides=["sample.noise_temperature=1"]).hash == base.hash
    assert load_config("ssim_v3", overrides=["sample.tile_overlap=8"]).hash == base.hash
    assert load_config("ssim_v3", overrides=["sample.tile_batch=8"]).hash == base.hash
    assert set(NOT_HASHED) == {("run", "out_dir"), ("run", "preset"), ("run", "fsdp"),
                               ("sample", "onestep_t"), ("sample", "onestep_draws"),
                               ("sample", "noise_temperature"), ("sample", "tile_overlap"),
                               ("sample", "tile_batch")}


def test_fsdp_does_not_enter_the_hash():
    # A run may be resumed with or without FSDP, and runs from before the option keep their hash.
    base = load_config("ssim_v3")
    assert load_config("ssim_v3", overrides=["run.fsdp=true"]).hash == base.hash
    assert "fsdp = true" in dump_toml(load_config("ssim_v3", overrides=["run.fsdp=true"]))


def test_two_runs_with_different_values_never_share_a_name():
    a = load_config("ssim_v3")
    b = load_config("ssim_v3", overrides=["loss.ssim_max_t=0.15"])
    assert a.run_name != b.run_name and a.run_dir != b.run_dir


def test_every_field_has_a_default_and_config_sections_are_dataclasses():
    cfg = Config()
    for section in dataclasses.fields(cfg):
        assert dataclasses.is_dataclass(getattr(cfg, section.name))


@pytest.mark.parametrize("make, message", [
    (lambda: LossConfig(ssim_weight=-1), r"loss.ssim_weight = -1: loss weights must be >= 0"),
    (lambda: DataConfig(source="eyeq2"), r"data.source = 'eyeq2': must be one of synthetic, eyeq"),
    (lambda: DataConfig(tasks=[]), r"data.tasks = \[\]: must be a non-empty list of sr2, sr4"),
    (lambda: OptimConfig(amp="fp8"), r"optim.amp = 'fp8': must be one of auto, bf16, off"),
    (lambda: InitConfig(from_=""), r"init.scratch = False: init.from is empty"),
])
def test_each_section_checks_itself_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_choice_outside_its_literal_is_refused_at_the_override():
    with pytest.raises(ConfigError, match=r"loss.pixel_kind = 'l3': must be one of l1, l2"):
        load_config("pixel", overrides=["loss.pixel_kind=l3"])


def test_the_old_base_preset_name_says_what_it_is_called_now():
    with pytest.raises(ConfigError, match="'base' is now called 'control'"):
        load_config("base")
    assert load_config("control").run.preset == "control" and load_config().hash == Config().hash


def test_a_new_run_names_the_older_run_of_its_preset_and_the_changed_keys(tmp_path):
    from medq.config import config_changes, older_runs
    from train.__main__ import orphan_notes

    out = f"run.out_dir={json.dumps(str(tmp_path))}"
    old = load_config("ssim_v3", overrides=[out])
    old.run_dir.mkdir()
    text = dump_toml(old).replace("ssim_weight = 0.1", "ssim_weight = 0.3")
    (old.run_dir / "config.toml").write_text(text.replace("timestep_shift = 1.0\n", ""))
    new = load_config("ssim_v3", overrides=[out])
    assert older_runs(new) == []  # its own directory is not an older run
    (tmp_path / "ssim_v3-0123abcd").mkdir()
    (tmp_path / "ssim_v3-0123abcd" / "config.toml").write_text(
        (old.run_dir / "config.toml").read_text())
    assert older_runs(new) == [tmp_path / "ssim_v3-0123abcd"]
    changes = config_changes(tmp_path / "ssim_v3-0123abcd" / "config.toml", new)
    assert changes == ["loss.ssim_weight: 0.3 -> 0.1",
                       "loss.timestep_shift = 1.0 (not in the saved config)"]
    notes = orphan_notes(new)
    assert "ssim_v3-0123abcd has the same preset under another config hash" in notes[0]
    assert notes[1:] == [f"  {c}" for c in changes]


def test_every_preset_the_code_names_exists():
    """``load_config("NAME", ...)`` with a literal name anywhere in the code (read with ``ast``)
    names a shipped preset: a renamed preset cannot hide in a code path the tests do not run
    (``bench eval`` still asked for 'base' where runs set the image size). This file names wrong
    presets on purpose."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bad = []
    for path in sorted(p for d in ("medq", "train", "infer", "bench", "demo", "tests")
                       for p in (repo / d).rglob("*.py") if p.name != "test_config.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_config"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and not node.args[0].value.endswith(".toml")
                    and node.args[0].value not in available_presets()):
                bad.append(f"{path.relative_to(repo)}:{node.lineno} {node.args[0].value!r}")
    assert not bad, "unknown presets named in code:\n" + "\n".join(bad)


def test_a_saved_config_with_a_renamed_key_still_loads_and_an_override_names_the_new_key(tmp_path):
    """Configs saved before the 'MMSE output' became the one-step estimate load with the same
    values (and the same hash); --set of the old name is refused naming the new one."""
    cfg = load_config("ssim_v3", overrides=["sample.onestep_t=0.8", "sample.onestep_draws=2"])
    old = dump_toml(cfg).replace("onestep_t", "mmse_t").replace("onestep_draws", "mmse_draws")
    path = tmp_path / "config.toml"
    path.write_text(old)
    again = load_config(str(path))
    assert (again.sample.onestep_t, again.sample.onestep_draws) == (0.8, 2)
    assert again.hash == cfg.hash
    with pytest.raises(ConfigError, match="sample.mmse_t is now called sample.onestep_t"):
        load_config("ssim_v3", overrides=["sample.mmse_t=0.8"])
