"""The worker's replay budget: pages in flight stay under the ceiling together, and wait in
order of arrival; only a few pages use the CPU at once."""

from __future__ import annotations

import threading
import time

from helpers import wait_until

from eventlog.budget import ReplayBudget


def test_pages_in_flight_stay_under_the_ceiling_and_wait_in_order() -> None:
    budget = ReplayBudget(100)
    release = [threading.Event() for _ in range(4)]
    got: list[int] = []
    most = [0]

    def page(n: int, size: int) -> None:
        with budget.reserve(size):
            got.append(n)
            most[0] = max(most[0], budget.held)
            release[n].wait(10)

    threads = [threading.Thread(target=page, args=(0, 60))]
    threads[0].start()
    wait_until(lambda: got == [0])
    for n, size in ((1, 60), (2, 10)):  # 2 would fit now, but 1 came first
        threads.append(threading.Thread(target=page, args=(n, size)))
        threads[-1].start()
        time.sleep(0.05)
    assert got == [0]
    release[0].set()
    wait_until(lambda: got == [0, 1, 2])
    release[1].set()
    release[2].set()
    for thread in threads:
        thread.join(5)
    assert most[0] <= 100
    assert budget.held == 0


def test_a_page_larger_than_the_ceiling_goes_alone() -> None:
    budget = ReplayBudget(100)
    with budget.reserve(500) as held:
        assert budget.held == 500
        held.resize(200)
        assert budget.held == 200
    assert budget.held == 0


def test_only_a_few_replays_take_a_turn_at_once() -> None:
    budget = ReplayBudget(1000, turns=2)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with budget.turn():
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert most[0] == 2
