"""Process-wide defaults the CLI sets before numpy or torch load (imported first by cli/main.py)."""

from __future__ import annotations

import os

# Whether the user chose a thread count (read at import, before the defaults below). train,
# generate and merge --base then keep it; otherwise a real base model gets every core
# (adapterctl.torch.use_all_cores).
USER_PINNED_THREADS = "OMP_NUM_THREADS" in os.environ


def set_thread_defaults() -> None:
    """One BLAS thread unless the user says otherwise, set before numpy can load: the matrices of a
    merge or prune are small (r x in), so a second OpenBLAS thread only doubled CPU time on 2 cores,
    and on a busy machine its spin-waiting made merges 3-9x slower (docs/benchmarks.md)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
