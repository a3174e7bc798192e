"""The busy-cores hint: when torch's default threads meet a machine others already keep busy."""

from __future__ import annotations

import logging

import pytest

from recsys_cl.utils import threads
from recsys_cl.utils.threads import busy_cores_hint


@pytest.mark.parametrize("num_threads, torch_threads, load, cores, hinted", [
    (0, 2, 5.0, 2, True),   # torch's default 2 threads, load 5 on 2 cores
    (0, 2, 2.0, 2, True),   # the cores are already all busy
    (0, 2, 1.9, 2, False),  # a core is free
    (1, 2, 5.0, 2, False),  # the user set the threads: their choice
    (0, 1, 5.0, 2, False),  # one thread does not contend with itself
])
def test_busy_cores_hint(num_threads: int, torch_threads: int, load: float, cores: int, hinted: bool) -> None:
    hint = busy_cores_hint(num_threads, torch_threads, load, cores)
    assert (hint is not None) == hinted
    if hint:
        assert f"load average is {load:.1f} on {cores} cores" in hint and "--set train.num_threads=1" in hint


def test_warned_once_per_process(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(threads, "_warned", False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("torch.get_num_threads", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="recsys_cl.utils.threads"):
        threads.warn_if_cores_busy(0)
        threads.warn_if_cores_busy(0)  # a sweep's second run
    assert [r.getMessage().startswith("the load average is 9.0 on 2 cores") for r in caplog.records] == [True]
