"""Training, calibration and generation: the parts of adapterctl that need torch and diffusers.

Installed with ``pip install 'adapterctl[train]'``. Nothing outside this package imports torch,
so inspect, validate and the file operations stay light; the CLI imports these modules only
inside the commands that need them (train, generate, merge --base).
"""

from __future__ import annotations

from adapterctl.errors import MissingExtra

_EXTRA_HINT = "pip install 'adapterctl[train]'"


def require() -> None:
    """Fail with one line, before any work, when the training extra is missing."""
    import importlib.util

    missing = [name for name in ("torch", "diffusers", "transformers", "PIL")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"this command needs {', '.join(missing)}, which is not installed", hint=_EXTRA_HINT)


def use_all_cores(base: str) -> None:
    """Give torch every core for a real base model. The CLI pins BLAS to one thread for the numpy
    merges unless the user set OMP_NUM_THREADS (then it does not call this). The tiny base stays on
    one thread: its operations are too small to gain from more, and on a loaded 2-core machine
    two threads made a tiny training step 8x slower (0.79 s against 0.097 s, docs/train.md)."""
    import os

    import torch

    if base == "tiny":  # set, not assumed: torch may have been imported before OMP_NUM_THREADS was
        torch.set_num_threads(1)
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                              os.cpu_count() or 1))


def quiet_libraries() -> None:
    """diffusers, transformers and huggingface_hub log and draw progress bars on their own; the CLI
    owns the terminal (one progress display, one error line), so they are silenced here."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # require() reports what is missing
        pass
