"""Config files and overrides: dict <-> dataclass with key and type checks, dotted overrides,
presets and overlays read from ``configs/``, the resolved TOML, and the differences between a
saved config and a new one."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Literal

from medq.config.checks import ALIASES, UNALIASES, ConfigError
from medq.config.sections import (
    NOT_HASHED,
    SECTIONS,
    Config,
    to_dict,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {UNALIASES.get(f.name, f.name): hints[f.name] for f in dataclasses.fields(cls)}


def _closest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; valid: {', '.join(valid)}"


def _coerce(key: str, value, typ):
    """Check ``value`` against the field type; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"{key} = {value!r}: must be one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            what = "one of " + ", ".join(map(str, typing.get_args(item))) \
                if typing.get_origin(item) is Literal else item.__name__
            raise ConfigError(f"{key} = {value!r}: expected a list of {what}")
        return [_coerce(f"{key}[{j}]", v, item) for j, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected an integer")
    if not isinstance(value, typ):
        raise ConfigError(f"{key} = {value!r}: expected {typ.__name__}, got {type(value).__name__}")
    return value


RENAMED_KEYS = {"sample.mmse_t": "sample.onestep_t", "sample.mmse_draws": "sample.onestep_draws"}
"""Keys renamed since configs were saved with them (issue 28: the 'MMSE output' is a one-step
estimate): a saved ``config.toml`` still loads, a ``--set`` of the old name is refused naming the
new one. Both are inference settings, outside the hash: the rename moves no run."""


def merge(base: dict, patch: dict, where: str) -> dict:
    """Apply a nested ``patch`` onto ``base`` (both with TOML key names), checking every key."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in patch.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section {section!r}{_closest(section, list(SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of key = value")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            full = f"{section}.{key}"
            if full in RENAMED_KEYS and where.startswith("override"):
                raise ConfigError(f"{where}: {full} is now called {RENAMED_KEYS[full]}")
            if full in RENAMED_KEYS:  # a file written before the rename: the same value
                full = RENAMED_KEYS[full]
                key = full.split(".", 1)[1]
            if key not in types:
                valid = [f"{section}.{k}" for k in types]
                raise ConfigError(f"{where}: unknown key {full!r}{_closest(full, valid)}")
            out[section][key] = _coerce(full, value, types[key])
    return out


def from_dict(d: dict) -> Config:
    kwargs = {}
    for section, cls in SECTIONS.items():
        kwargs[section] = cls(**{ALIASES.get(k, k): v for k, v in d[section].items()})
    return Config(**kwargs)


def parse_override(text: str) -> dict:
    """``loss.ssim_weight=0.2`` -> {'loss': {'ssim_weight': 0.2}}. Values are TOML literals; a
    bare word that is not a TOML literal is taken as a string (``data.source=eyeq``)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(
            f"override {text!r}: expected section.key=value, e.g. loss.ssim_weight=0.2"
        )
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return {section: {name: value}}


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with dotted ``section.key=value`` overrides applied (checked like ``load_config``'s);
    ``cfg`` itself is not changed. The preset name is kept."""
    d = to_dict(cfg)
    for text in overrides:
        d = merge(d, parse_override(text), f"override {text!r}")
    return from_dict(d)


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


CONTROL = "control"
RENAMED_PRESETS = {"base": CONTROL}
"""Presets renamed by issue 16 ("base" meant the defaults, the base model and a model size)."""


def _config_file(name: str, config_dir: Path, what: str) -> Path:
    """``config_dir/<name>.toml``, refused when the name leads outside ``config_dir``."""
    file = config_dir / f"{name}.toml"
    if not file.resolve().is_relative_to(config_dir.resolve()):
        raise ConfigError(f"{what} {name!r}: {file} is outside {config_dir}; {what} names are "
                          f"files of configs/ (a TOML file elsewhere is read when given as its "
                          f"path, ending in .toml)")
    return file


def _run_name_part(name: str, where: str) -> str:
    """A preset name as it becomes the run directory ``<run.out_dir>/<name>-<hash8>``: one path
    component, so that every run directory stays inside ``run.out_dir``."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"run.preset = {name!r} ({where}): must be a plain name (no '/', not "
                          f"starting with '.'): the run directory is <run.out_dir>/<preset>-<hash>")
    return name


def load_config(preset: str = CONTROL, overrides: list[str] = (), overlays: list[str] = (),
                config_dir: Path = CONFIG_DIR) -> Config:
    """Resolve defaults <- preset file <- overlay files (e.g. 'model/small') <- overrides.

    ``preset`` is a name in ``configs/`` (``control``, an empty file, is the defaults alone) or a
    path to a TOML file (e.g. a run's saved ``config.toml``, which loads back to an equal
    Config): a value ending in ``.toml`` that names an existing file is read as that path, any
    other value is looked up inside ``configs/`` and may not lead out of it (``../x``). The same
    holds for overlays. The preset name (the file's ``run.preset``, else its stem) must be one
    path component: it names the run directory inside ``run.out_dir``."""
    d = to_dict(Config())
    path = Path(preset)
    if path.suffix == ".toml" and path.exists():
        data = _read_toml(path)
        name = data.get("run", {}).get("preset", path.stem)
        d = merge(d, data, str(path))
    else:
        file = _config_file(preset, config_dir, "preset")
        if preset in RENAMED_PRESETS and not file.exists():
            raise ConfigError(f"preset {preset!r} is now called {RENAMED_PRESETS[preset]!r} "
                              f"(configs/{RENAMED_PRESETS[preset]}.toml)")
        if not file.exists():
            near = _closest(preset, available_presets())
            raise ConfigError(f"unknown preset {preset!r} (no {file}){near}")
        d = merge(d, _read_toml(file), str(file))
        name = preset
    for overlay in overlays:
        file = (Path(overlay) if Path(overlay).suffix == ".toml"
                else _config_file(overlay, config_dir, "overlay"))
        if not file.exists():
            raise ConfigError(f"overlay {overlay!r}: no such file {file}")
        d = merge(d, _read_toml(file), str(file))
    for text in overrides:
        d = merge(d, parse_override(text), f"override {text!r}")
    d["run"]["preset"] = _run_name_part(str(name), str(path))
    return from_dict(d)


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML (every value), with its hash in a header comment."""
    lines = [f"# resolved config of run {cfg.run_name}; sha256 {cfg.hash}"]
    for section, values in to_dict(cfg).items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


# ---------------------------------------------------------------------------------------------
# orphaned runs: the hash covers every value, so a new field gives every preset a new directory


def older_runs(cfg: Config) -> list[Path]:
    """Run directories of ``cfg``'s preset in ``run.out_dir`` under another hash, newest first."""
    out = Path(cfg.run.out_dir)
    if not out.is_dir():
        return []
    name = re.compile(rf"{re.escape(cfg.run.preset)}-[0-9a-f]{{8}}")
    found = [p for p in out.iterdir() if name.fullmatch(p.name) and p.name != cfg.run_name
             and (p / "config.toml").is_file()]
    return sorted(found, key=lambda p: (p / "config.toml").stat().st_mtime, reverse=True)


def config_changes(saved: Path, cfg: Config) -> list[str]:
    """What differs between a run's saved ``config.toml`` and ``cfg``, one line per hashed key:
    ``loss.ssim_weight: 0.1 -> 0.2``, ``run.new_key = 1 (not in the saved config)``,
    ``x.old_key (no longer a key)``."""
    try:
        old = tomllib.loads(Path(saved).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"{saved} is unreadable ({e})"]
    new, lines = to_dict(cfg), []
    for section in sorted(set(old) | set(new)):
        o, n = old.get(section, {}), new.get(section, {})
        for key in sorted(set(o) | set(n)):
            full = f"{section}.{key}"
            if (section, key) in NOT_HASHED:
                continue
            if key not in o:
                lines.append(f"{full} = {_toml_value(n[key])} (not in the saved config)")
            elif key not in n:
                lines.append(f"{full} (no longer a key)")
            elif o[key] != n[key]:
                lines.append(f"{full}: {_toml_value(o[key])} -> {_toml_value(n[key])}")
    return lines
