"""The supervisor's choice of worker for a new connection: of its kind, the fewest open, ties taken in turn."""

from __future__ import annotations

from app.workers import CALLBACKS, READS, connection_kind, least_loaded, open_counts


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


def test_a_connection_is_a_callback_when_its_first_request_posts_to_the_callback_path() -> None:
    assert connection_kind(b"POST /callback") == CALLBACKS
    assert connection_kind(b"POST /callback?SdkAppid=1") == CALLBACKS
    assert connection_kind(b"GET /users/u1/profile HTTP/1.1") == READS
    assert connection_kind(b"GET /callback") == READS
    assert connection_kind(b"POST /events") == READS
    assert connection_kind(b"POST /call") == READS  # too little in yet to tell: any worker serves it


def test_only_workers_of_the_connections_kind_are_counted() -> None:
    workers = [(CALLBACKS, 0), (CALLBACKS, 4), (READS, 9)]
    assert open_counts(CALLBACKS, workers) == [0, 4, None]
    assert open_counts(READS, workers) == [None, None, 9]
    assert least_loaded(open_counts(READS, workers), last=0) == 2


def test_every_ready_worker_is_counted_when_none_of_the_kind_is_ready() -> None:
    assert open_counts(READS, [(CALLBACKS, 3), (CALLBACKS, None), (READS, None)]) == [3, None, None]
    assert open_counts(None, [(None, 1), (None, None)]) == [1, None]
