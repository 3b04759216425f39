"""Two processes under torchrun (gloo, CPU): each rank takes r::world, rank 0 merges; the result
equals a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medq.harness.records import read_records

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

WORKER = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import torch, torch.distributed as tdist
    torch.set_num_threads(1)
    from medq.harness import run_harness
    from fakes.infer import PROMPT, NoisySeeded, make_items, parse_report
    if {dist}:
        tdist.init_process_group("gloo")
    run_harness(NoisySeeded(), make_items(5), {out!r}, seed=4, batch_size=2, progress=False,
                prompt=PROMPT, parse_report=parse_report)
    if {dist}:
        tdist.destroy_process_group()
""")


def _run(tmp_path, out, dist):
    script = tmp_path / f"worker_{dist}.py"
    script.write_text(WORKER.format(repo=str(REPO), tests=str(TESTS), out=str(out), dist=dist))
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
            "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(script)]
           if dist else [sys.executable, str(script)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    _run(tmp_path, tmp_path / "one", False)
    _run(tmp_path, tmp_path / "two", True)
    for task in ("sr4", "enhance"):
        a, b = read_records(tmp_path / "one" / task), read_records(tmp_path / "two" / task)
        assert [r["id"] for r in b] == [f"img{k:03d}" for k in range(5)]
        strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        assert [strip(r) for r in a] == [strip(r) for r in b]
        for r in b:
            assert (tmp_path / "one" / task / r["output"]).read_bytes() == \
                (tmp_path / "two" / task / r["output"]).read_bytes()
        assert not list((tmp_path / "two" / task).glob("records.part-*"))
