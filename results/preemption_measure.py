"""Updates lost to one SIGTERM at update 31 of the default 2-rank Snake run: commit 8bc519f's script (before
the stop signal was served at an update boundary) against the working tree's. Prints what
results/preemption.json holds."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

root = Path(__file__).resolve().parents[1]
for version in ("before", "after"):
    d = Path(tempfile.mkdtemp(prefix=f"preempt_{version}_"))
    show = ["git", "show", "8bc519f:ppo_ddp_snake.py"]
    src = subprocess.run(show, cwd=root, capture_output=True, text=True, check=True).stdout
    (d / "ppo_ddp_snake.py").write_text(
        src if version == "before" else (root / "ppo_ddp_snake.py").read_text()
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "ppo_ddp_snake.py",
    ]
    cmd += ["--run-name=r", "--print-interval=600"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    csv = d / "runs/r/progress.csv"
    rows = lambda csv=csv: len(csv.read_text().splitlines()) - 1 if csv.exists() else 0  # noqa: E731
    while rows() < 31:
        time.sleep(0.05)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    text = p.communicate(timeout=120)[0]
    ckpts = sorted((d / "runs/r/checkpoints").glob("update_*.pt"))
    newest = int(re.search(r"update_(\d+)", ckpts[-1].name)[1]) if ckpts else 0
    print(
        f"{version}: rows at exit {rows()}, newest checkpoint {newest}, updates lost {rows() - newest}, "
        f"signal to exit {time.monotonic() - t0:.2f} s, SIGKILL {'forcefully exiting' in text}"
    )
    shutil.rmtree(d)
