"""Fault injection and counting inside Ray workers, for the sweep tests (a ``worker_process_setup_hook``).

When ``CBPT_SWEEP_FAULTS`` names a folder, each worker wraps ``cbpt_guard.check``
and detection's ``gather_evidence`` so that every check and every detection run
appends a line to ``log`` there (``check NAME`` / ``detect NAME``, NAME the
model folder's name), and files in that folder steer faults by model name:

- ``kill-once-NAME``: the first check of NAME kills its worker (SIGKILL);
- ``kill-always-NAME``: every check of NAME kills its worker;
- ``hold-NAME``: a check of NAME waits while the file exists, then kills its worker
  (so a check held there never finishes, even if its driver is gone).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def install() -> None:
    folder = os.environ.get("CBPT_SWEEP_FAULTS")
    if not folder:
        return
    import torch

    torch.set_num_threads(1)
    import cbpt_guard
    from cbpt_guard.detect import run as detect_run

    faults = Path(folder)
    real_check, real_gather = cbpt_guard.check, detect_run.gather_evidence
    current = {"name": None}

    def check(model, **kwargs):
        name = Path(model).name
        current["name"] = name
        log(faults, f"check {name}")
        claim = faults / f"kill-once-{name}"
        if claim.exists():
            try:
                os.rename(claim, faults / f"killed-{name}-{os.getpid()}")
            except OSError:
                pass  # another worker claimed it
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        if (faults / f"kill-always-{name}").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        while (faults / f"hold-{name}").exists():
            time.sleep(0.2)
        if (faults / f"held-{name}").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_check(model, **kwargs)

    def gather(*args, **kwargs):
        log(faults, f"detect {current['name']}")
        return real_gather(*args, **kwargs)

    cbpt_guard.check = check
    detect_run.gather_evidence = gather


def log(faults: Path, line: str) -> None:
    with open(faults / "log", "a") as handle:  # O_APPEND: whole lines from every worker
        handle.write(line + "\n")


def read_log(faults: Path) -> list[str]:
    path = faults / "log"
    return path.read_text().splitlines() if path.exists() else []
