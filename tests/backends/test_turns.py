"""Threads that compile side by side take turns at the parent-side work and overlap only while waiting."""

from __future__ import annotations

import threading

from nasforge.backends.turns import Turns

TIMEOUT_S = 30


def test_a_waiting_thread_lets_another_take_its_turn_and_turns_never_overlap() -> None:
    turns, log, inside = Turns(), [], []
    a_waits, b_done = threading.Event(), threading.Event()

    def parent_work(name: str) -> None:
        inside.append(name)
        assert len(inside) == 1, f"{inside} at once"
        log.append(name)
        inside.remove(name)

    def first() -> None:
        with turns.turn():
            parent_work("a exports")
            with turns.waiting():  # its child compiles
                a_waits.set()
                assert b_done.wait(TIMEOUT_S), "the other thread never got a turn while this one waited"
            parent_work("a runs")

    def second() -> None:
        assert a_waits.wait(TIMEOUT_S)
        with turns.turn():
            parent_work("b exports")
            with turns.waiting():
                b_done.set()
            parent_work("b runs")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert log[:2] == ["a exports", "b exports"] and sorted(log[2:]) == ["a runs", "b runs"]


def test_waiting_without_a_turn_just_waits() -> None:
    turns = Turns()
    with turns.waiting():  # the usual single-threaded compile: nothing to let go of
        pass
    with turns.turn(), turns.waiting(), turns.turn():  # let go while waiting: a turn can be taken again
        pass
