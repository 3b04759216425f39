"""Server memory over many uploads (issue 30: bounded, a plateau): the page's RSS after
``--uploads`` comparisons of uploaded photographs, and what is left on disk after it stops.

    python -m demo bench-memory                                  # 20 and 200 uploads, bicubic
    python -m demo bench-memory --runs runs --modes ssim_v3,pixel --uploads 20,100,200

Starts ``python -m demo`` in a subprocess (its own temp folder), uploads synthetic fundus
photographs of ``--size`` px (a different one each time) through ``gradio_client`` as a user
would, starting a new client, hence a new browser session, every ``--per-session`` uploads
(``gradio_client`` ends the replaced client's session, as a closed tab does; the bounds on
sessions left open are unit tests of ``demo.hygiene``), reads the
server's resident memory (``VmRSS``) after each count, then stops it with SIGTERM and counts the
files left in its temp folder. Prints a table; measures memory, not time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=Path, default=Path("runs"), help="default: runs")
    p.add_argument("--reports", type=Path, default=Path("reports"), help="default: reports")
    p.add_argument("--modes", default="bicubic",
                   help="mode labels to compare on every upload, comma-separated (default: "
                        "bicubic)")
    p.add_argument("--uploads", default="20,200",
                   help="upload counts after which memory is read (default: 20,200)")
    p.add_argument("--size", type=int, default=512, help="side of the photographs (default 512)")
    p.add_argument("--per-session", type=int, default=10,
                   help="uploads per client session (default 10)")


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _photo(folder: Path, k: int, size: int) -> Path:
    from PIL import Image

    from medq.report_ood import synthetic_image

    path = folder / f"photo_{k:04d}.png"
    img = synthetic_image(7, k, size)
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")).save(path)
    return path


def _start(args, tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp)}
    server = subprocess.Popen([sys.executable, "-m", "demo", "--runs", str(args.runs),
                               "--reports", str(args.reports), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"bench-memory: the server stopped: {server.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("bench-memory: the server did not start within 300 s")


def main(args) -> int:
    from gradio_client import Client, handle_file

    counts = sorted({int(n) for n in args.uploads.split(",")})
    modes = [m for m in args.modes.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="medq-bench-memory-"))
    tmp = work / "server-tmp"
    tmp.mkdir()
    server, url = _start(args, tmp)
    rows, client = [], None
    try:
        for k in range(1, counts[-1] + 1):
            if client is None or (k - 1) % args.per_session == 0:
                client = Client(url, verbose=False)
            photo = _photo(work, k, args.size)
            result = client.predict(handle_file(str(photo)), "", "sr4", modes, 0.5, 0.5, 4,
                                    "blur", api_name="/compare")
            if "Showing" not in str(result[-1]):
                raise SystemExit(f"bench-memory: upload {k} failed: {result[-1]}")
            photo.unlink()
            if k in counts:
                rows.append((k, rss_mb(server.pid)))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    left = [p for p in tmp.rglob("*") if p.is_file()]
    first = rows[0][1]
    print(f"server memory (VmRSS) over uploads of {args.size}-px photographs; modes "
          f"{', '.join(modes)}; a new session every {args.per_session} uploads")
    print(f"{'uploads':>8} {'RSS (MB)':>9} {'vs first':>9}")
    for k, mb in rows:
        print(f"{k:>8} {mb:9.1f} {100 * (mb - first) / first:+8.1f}%")
    print(f"files left in the server's temp folder after it stopped: {len(left)}")
    for path in sorted(left)[:10]:         # what they are: the first step to removing them
        print(f"  {path.relative_to(tmp)}")
    return 0
