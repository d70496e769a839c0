"""The local runner (rwmaps_cli.run.run_local): batches that fit in memory, cases run one at
a time when they would not fit together, and a dying worker that fails only its case."""

import os
import signal
import time
from pathlib import Path

import pytest

from rwmaps_cli.inputs.dataset import Case
from rwmaps_cli.manifest import CaseResult
from rwmaps_cli.run import WORKER_DIED, run_local


# A work function for run_local that really kills its worker process for some cases.

def _work(case: Case, marker_dir: str) -> CaseResult:
    if case.name.startswith("kill_always") or (
        case.name.startswith("kill_once") and not (Path(marker_dir) / case.name).exists()
    ):
        (Path(marker_dir) / case.name).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return CaseResult(case.name, "done", seconds=0.2)


@pytest.mark.parametrize("forked", [False, True], ids=["loky-spawn", "forkserver"])
def test_a_dying_worker_fails_only_its_case(tmp_path, monkeypatch, forked):
    # Both ways workers start (rwmaps_cli.workers): forked from the server, as `rwmaps
    # compute` does, and loky's own, as a script calling compute_dataset gets.
    monkeypatch.setattr("rwmaps_cli.workers._main_is_safe", lambda: forked)
    names = ["a", "b", "kill_always", "c", "kill_once", "d", "e"]
    cases = [Case(tmp_path / n, tmp_path / n, n) for n in names]
    records = {r.name: r for r in run_local(cases, _work, jobs=2, marker_dir=str(tmp_path))}
    assert set(records) == set(names)
    assert records["kill_always"] == CaseResult("kill_always", "failed", error=WORKER_DIED, seconds=None)
    assert all(records[n].status == "done" for n in names if n != "kill_always")


def _timed_work(case: Case) -> dict:
    start = time.time()
    time.sleep(0.3)
    return {"name": case.name, "status": "done", "error": None, "seconds": 0.3, "span": (start, time.time())}


def test_cases_that_would_not_fit_in_memory_together_run_one_at_a_time(tmp_path):
    from rwmaps_cli.run import available_memory

    cases = [Case(tmp_path / n, tmp_path / n, n) for n in "abcd"]
    huge = available_memory() * 0.6  # two at once would not fit
    spans = [r["span"] for r in run_local(cases, _timed_work, jobs=2, memory_need=lambda case: huge)]
    spans.sort()
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    small = [r["span"] for r in run_local(cases, _timed_work, jobs=2, memory_need=lambda case: 1)]
    small.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(small, small[1:])), small  # control: overlap


def test_a_batch_takes_only_the_cases_that_fit_beside_the_running_ones(tmp_path):
    from collections import deque

    from rwmaps_cli.run import _next_batch

    need = {"a": 1, "b": 1, "big": 10, "c": 1, "huge": 99}
    cases = deque(Case(tmp_path / n, tmp_path / n, n) for n in ["a", "b", "big", "c"])
    batch, refused = _next_batch(cases, 8, lambda case: need[case.name], budget=12, free=5)
    assert [c.name for c in batch] == ["a", "b"] and not refused
    assert [c.name for c in cases] == ["big", "c"]  # big waits: it does not fit beside what runs
    batch, _ = _next_batch(cases, 8, lambda case: need[case.name], budget=12, free=12)  # nothing running
    assert [c.name for c in batch] == ["big", "c"]
    cases = deque([Case(tmp_path / "huge", tmp_path / "huge", "huge")])
    batch, refused = _next_batch(cases, 8, lambda case: need[case.name], budget=12, free=12)
    assert not batch and refused[0].status == "failed" and "more than the" in refused[0].error
