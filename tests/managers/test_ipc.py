"""managers/ipc.py: what a server child process sets up for itself."""

from __future__ import annotations

import subprocess
import sys

# A child that made a tqdm bar (model load) held a multiprocessing semaphore; killed at shutdown, it
# left the resource tracker's "leaked semaphore objects" warning on every Ctrl-C of `radixserve serve`.
CHILD = """
import multiprocessing, os
from tqdm.auto import tqdm
from radixserve.managers.ipc import init_child_process
init_child_process()
bar = tqdm(total=2, disable=True)
bar.close()
print([line.split()[5] for line in open("/proc/self/maps") if "/sem." in line])
"""


def test_a_child_process_makes_no_semaphore_for_its_progress_bars() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_without_it_tqdm_would_make_one() -> None:
    # The check above can fail: a plain process's first bar maps a semaphore.
    plain = CHILD.replace("init_child_process()\n", "")
    out = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, timeout=120, check=True)
    assert "/sem." in out.stdout
