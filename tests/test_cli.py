"""The command lines: every command the README and the user docs document parses (nothing runs,
nothing trains), and ``python -m bench SUB --help`` shows that subcommand's documentation and
imports only it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTS = ("python -m ", "make ", "torchrun ")
# The user docs whose code blocks are commands to run (docs/HISTORY.md keeps old ones on purpose).
DOCUMENTED = ("README.md", "docs/BRING_YOUR_OWN_MODEL.md", "docs/METRICS.md",
              "docs/DEMO.md")


def readme_commands() -> list[str]:
    """The shell commands of the code blocks of ``DOCUMENTED`` (comments and output lines dropped;
    ``a && b`` is two commands; ``[--opt x]`` optional parts are kept, without their brackets)."""
    text = "\n".join((REPO / name).read_text(encoding="utf-8") for name in DOCUMENTED)
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            for cmd in (c.strip() for c in line.split("&&")):
                body = " ".join(w for w in cmd.split() if not re.fullmatch(r"[A-Z_]+=\S*", w))
                if body.startswith(STARTS):
                    out.append(re.sub(r"\[([^\]]*)\]", r"\1", cmd))
    return out


def _env_and_words(cmd: str) -> tuple[dict, list[str]]:
    words = shlex.split(cmd)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def test_the_readme_documents_commands():
    cmds = readme_commands()
    assert any(c.startswith("make train-v3") for c in cmds)
    assert any(c.startswith("python -m bench score ") for c in cmds)


@pytest.mark.parametrize("cmd", readme_commands())
def test_every_readme_command_parses(cmd, tmp_path):
    """``make X``: ``make -n`` (the target exists; nothing is run). ``python -m train ...``: with
    ``--dry-run``. Any other ``python -m STAGE ...``: its parser reads the arguments as written
    (a wrong option or subcommand fails here)."""
    env, words = _env_and_words(cmd)
    if words[0] == "make":
        proc = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr
        return
    assert words[:2] == ["python", "-m"], cmd
    stage, argv = words[2], words[3:]
    if stage == "train":
        from train.__main__ import SUBCOMMANDS, build_parser

        if argv and argv[0] in SUBCOMMANDS:
            _parse_subcommand("python -m train", SUBCOMMANDS, argv)
        else:
            from train.__main__ import main

            build_parser().parse_args(argv)
            out = tmp_path / "runs"
            assert main([*argv, "--dry-run", "--set", f'run.out_dir="{out}"']) == 0
            assert not out.exists()
    elif stage == "bench":
        from bench.__main__ import SUBCOMMANDS

        _parse_subcommand("python -m bench", SUBCOMMANDS, argv)
    elif stage == "infer":
        from infer.__main__ import build_parser

        build_parser().parse_args(argv)
    elif stage == "demo":
        from demo.__main__ import SUBCOMMANDS, parse_args

        if argv and argv[0] in SUBCOMMANDS:
            _parse_subcommand("python -m demo", SUBCOMMANDS, argv)
        else:
            parse_args(argv)
    else:
        pytest.fail(f"README command of an unknown stage: {cmd}")


def _parse_subcommand(prog: str, subcommands: dict, argv: list[str]) -> None:
    from medq.cli import resolve

    found = resolve(prog, subcommands, argv)
    assert found is not None, f"{prog} {argv[0]}: no such subcommand"
    module, parser, rest = found
    assert not hasattr(module, "SUBCOMMANDS"), f"{prog} {' '.join(argv)}: names a group only"
    parser.parse_args(rest)


def test_bench_help_shows_the_subcommand_docs_and_imports_only_it():
    import subprocess
    import sys

    code = (
        "import sys\nfrom bench.__main__ import main\n"
        "try:\n    main(['score-text', '--help'])\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "print('EVAL_IMPORTED' if 'bench.eval' in sys.modules else 'EVAL_NOT_IMPORTED')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "Each line of the JSONL" in out          # the module docstring, not just the options
    assert out.strip().endswith("EVAL_NOT_IMPORTED")


