"""A hint for the most common cause of a CPU job running many times slower than usual.

torch runs one thread per core by default. When other processes already keep those cores busy,
its threads wait on each other at every parallel region: on this project's 2-core machine, with a
load average of ~5, a training step took 887 ms with torch's 2 threads and 77 ms with 1.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_warned = False


def busy_cores_hint(
    num_threads: int, torch_threads: int, load: float | None = None, cores: int | None = None,
    key: str = "train.num_threads",
) -> str | None:
    """The hint to set ``key`` when torch uses its default threads (``num_threads`` 0, ``torch_threads``
    > 1) on a machine whose 1-minute load average already reaches its core count; None otherwise.
    ``load`` / ``cores``: the machine's (``os.getloadavg()[0]``, the cores this process may run on)
    when None. The 1-minute load average counts this job's own recent work too (reading the data),
    but seconds of it move a 1-minute average little."""
    if num_threads != 0 or torch_threads <= 1:
        return None
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return None
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))  # the cores this process may use, as torch counts them
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
    if load < cores:
        return None
    return (f"the load average is {load:.1f} on {cores} cores as training starts, and torch runs "
            f"{torch_threads} threads, which then wait on each other: steps can be many times slower. "
            f"On a busy machine --set {key}=1 is usually much faster")


def warn_if_cores_busy(num_threads: int, key: str = "train.num_threads") -> None:
    """Log :func:`busy_cores_hint` as a warning when it applies, once per process (a sweep trains
    many models)."""
    import torch

    global _warned
    hint = None if _warned else busy_cores_hint(num_threads, torch.get_num_threads(), key=key)
    if hint:
        log.warning(hint)
        _warned = True
