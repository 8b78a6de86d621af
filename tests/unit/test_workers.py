"""The supervisor's choice of worker for a new connection: the fewest open, ties taken in turn."""

from __future__ import annotations

from app.workers import least_loaded


def test_the_worker_with_the_fewest_open_connections_is_chosen() -> None:
    assert least_loaded([3, 1, 2], last=0) == 1
    assert least_loaded([0, 5], last=0) == 0


def test_ties_are_taken_in_turn_after_the_last_choice() -> None:
    assert least_loaded([2, 2, 2], last=2) == 0
    assert least_loaded([2, 2, 2], last=0) == 1
    assert least_loaded([1, 2, 1], last=0) == 2
    assert least_loaded([1, 2, 1], last=2) == 0


def test_a_worker_that_is_not_ready_is_never_chosen() -> None:
    assert least_loaded([None, 7], last=1) == 1
    assert least_loaded([None, None], last=0) is None
    assert least_loaded([], last=0) is None


def test_a_burst_on_idle_workers_is_split_evenly() -> None:
    loads: list[int | None] = [0, 0, 0]
    last = len(loads) - 1
    for _ in range(9):
        chosen = least_loaded(loads, last)
        assert chosen is not None
        loads[chosen] = (loads[chosen] or 0) + 1
        last = chosen
    assert loads == [3, 3, 3]
