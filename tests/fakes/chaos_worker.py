"""Training processes for the chaos test (tests/test_chaos.py), forked from one server process.

``python -m fakes.chaos_worker`` (with tests/ on the path) imports torch and the trainer once, then
reads commands on stdin:

    run <out_dir> <max_steps> <ckpt_every> <slow_save> <log_prefix>  -> prints the child's PID
    wait <pid>                                  -> prints its exit code (-9 when SIGKILLed)

Each child is a separate process (the kill is a real SIGKILL of a real trainer); forking skips the
seconds of ``import torch`` per start, so the test can afford a dozen kills. The child trains the
tiny task of fakes.training, a few milliseconds per step, with ``train.loop.train``, and writes
to ``<log_prefix>.out``: ``resume <step>`` when training starts, ``step <n>`` as each step is
computed and ``done <fingerprint>`` at the end; a lock or checkpoint error is one line on
``<log_prefix>.err`` and exit code 2."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

from fakes.training import TinyTask
from medq.checkpoint import CheckpointError
from medq.config import load_config
from medq.run_lock import RunLockedError
from train.loop import train

STEP_SECONDS = 0.01


class SlowTask(TinyTask):
    def train_batches(self, start_step):
        print(f"resume {start_step}", flush=True)
        yield from super().train_batches(start_step)

    def losses(self, batch, generator):
        print(f"step {batch['step']}", flush=True)
        time.sleep(STEP_SECONDS)
        return super().losses(batch, generator)


def config(out_dir: str, max_steps: int, ckpt_every: int):
    return load_config("pretrain", overrides=[
        f"run.out_dir={json.dumps(out_dir)}", f"optim.max_steps={max_steps}",
        "optim.warmup_steps=2", "optim.lr=0.05", "run.log_every=1",
        f"run.ckpt_every={ckpt_every}", f"run.val_every={ckpt_every}", "run.keep_last=2",
        "run.probe_every=1000", "optim.ema_decay=0.9"])


def main(out_dir: str, max_steps: int, ckpt_every: int) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = train(config(out_dir, max_steps, ckpt_every), SlowTask(), progress=False)
    except (RunLockedError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done {out['fingerprint']}", flush=True)
    return 0


def _child(out_dir: str, max_steps: int, ckpt_every: int, slow_save: str, prefix: str) -> None:
    os.environ["MEDQ_TEST_SLOW_SAVE"] = slow_save
    for fd, suffix in ((1, ".out"), (2, ".err")):
        f = os.open(prefix + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    try:
        rc = main(out_dir, max_steps, ckpt_every)
    except BaseException:  # noqa: BLE001 - the test reads the traceback in the .err file
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def serve() -> None:
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            pid = os.fork()
            if pid == 0:
                _child(args[0], int(args[1]), int(args[2]), args[3], args[4])
            print(pid, flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    serve()
