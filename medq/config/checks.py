"""The checks every config section runs on itself, and the error they raise: the generic range
of every number, the choices of every ``Literal`` field. Shared by ``sections`` and ``loading``."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

from medq.tasks import TASKS


class ConfigError(ValueError):
    """A configuration key, type or value is wrong; the message says which and why."""


# TOML and command-line names that are Python keywords.
ALIASES = {"from": "from_"}
UNALIASES = {v: k for k, v in ALIASES.items()}

Task = Literal[TASKS]


def require(cond: bool, key: str, value, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {value!r}: {rule}")


FLOAT_LIMIT = 1e6
"""Largest magnitude of any float setting. No setting of this trainer means anything near it (the
presets' values are orders of magnitude below); beyond it a value is a typo (``1e9`` for ``1e-9``)
or an overflow, and inf / nan would train to non-finite outputs without an error."""
INT_RANGE = (-(2**63), 2**63 - 1)
"""Integer settings are 64-bit, as TOML's integers (Python's reader accepts any size)."""
SEED_RANGE = (0, 2**32 - 1)
"""Seeds (fields named ``seed`` or ``*_seed``): what every RNG the project seeds accepts (numpy's
legacy seeding stops at 2**32; torch's generators take 64 bits, and the trainer's generator seed
is ``run.seed * 1000 + rank``)."""


def check_number(typ, value, key: str) -> None:
    """The generic range of every float and int setting (``FLOAT_LIMIT``, ``INT_RANGE``,
    ``SEED_RANGE``): a new field gets it without a line of its own."""
    if typ is float:
        require(isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and abs(value) <= FLOAT_LIMIT, key, value,
                f"must be a finite number between -{FLOAT_LIMIT:g} and {FLOAT_LIMIT:g}")
    elif typ is int and not isinstance(value, bool) and isinstance(value, int):
        seed = key.rsplit(".", 1)[-1].split("[")[0]
        lo, hi = SEED_RANGE if seed == "seed" or seed.endswith("_seed") else INT_RANGE
        require(lo <= value <= hi, key, value, f"must be an integer in {lo}..{hi}"
                + (" (a seed every RNG accepts)" if (lo, hi) == SEED_RANGE else ""))


def check_section(section, name: str) -> None:
    """The checks every section runs at construction (its ``__post_init__``): each ``Literal``
    field holds one of its choices, each ``list[Literal]`` field a non-empty list of them, every
    float (and list of floats) is finite and within ``FLOAT_LIMIT``, every int within
    ``INT_RANGE`` (seeds: ``SEED_RANGE``)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        typ, value = hints[f.name], getattr(section, f.name)
        key = f"{name}.{UNALIASES.get(f.name, f.name)}"
        if typing.get_origin(typ) is list and typing.get_args(typ)[0] in (float, int):
            for j, item in enumerate(value if isinstance(value, list) else []):
                check_number(typing.get_args(typ)[0], item, f"{key}[{j}]")
        else:
            check_number(typ, value, key)
        if typing.get_origin(typ) is Literal:
            choices = typing.get_args(typ)
            require(value in choices and type(value) is type(choices[0]), key, value,
                    f"must be one of {', '.join(map(str, choices))}")
        elif (
            typing.get_origin(typ) is list and typing.get_origin(typing.get_args(typ)[0]) is Literal
        ):
            choices = typing.get_args(typing.get_args(typ)[0])
            require(isinstance(value, list) and len(value) > 0 and all(v in choices for v in value),
                    key, value, f"must be a non-empty list of {', '.join(map(str, choices))}")


