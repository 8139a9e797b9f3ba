"""Repeated log lines: the first one, then one summary with the count, per interval."""

from __future__ import annotations

import logging

import pytest

from adapters._logs import LogCollapser

logger = logging.getLogger("sansproxy.test-logs")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger.name]


def test_repeats_within_the_interval_become_one_summary(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    logs = LogCollapser(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for n in range(200):
            clock.now = 100.0 + n * 0.01  # 200 in 2 s
            logs.log(logging.ERROR, "refused [id=%s]", f"ex{n}", key="refused", text="refused")
        assert lines(caplog) == [("ERROR", "refused [id=ex0]")]
        clock.now = 110.5  # the interval is over: the next one says how many there were
        logs.log(logging.ERROR, "refused [id=%s]", "ex200", key="refused", text="refused")
        logs.flush()
    assert lines(caplog) == [
        ("ERROR", "refused [id=ex0]"),
        ("ERROR", "refused (repeated 199 times in 10 s)"),
        ("ERROR", "refused [id=ex200]"),
    ]


def test_flush_says_what_was_held_back(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    logs = LogCollapser(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in range(3):
            logs.log(logging.WARNING, "redis down: %s", "refused")
        logs.log(logging.WARNING, "once")
        clock.now += 2.5
        logs.flush()
        logs.flush()  # nothing more to say
    assert lines(caplog) == [
        ("WARNING", "redis down: refused"),
        ("WARNING", "once"),
        ("WARNING", "redis down: refused (repeated 2 times in 3 s)"),
    ]


def test_kinds_are_level_and_key(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    logs = LogCollapser(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        logs.log(logging.ERROR, "a")
        logs.log(logging.WARNING, "a")  # another level: another kind
        logs.log(logging.ERROR, "b")
        logs.log(logging.ERROR, "a")
        logs.log(logging.ERROR, "c %s", 1, key="c", text="c")
        logs.log(logging.ERROR, "c %s", 2, key="c", text="c")  # the same kind
    assert lines(caplog) == [("ERROR", "a"), ("WARNING", "a"), ("ERROR", "b"), ("ERROR", "c 1")]


def test_a_summary_comes_with_the_next_line_of_any_kind(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    logs = LogCollapser(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        logs.log(logging.ERROR, "a")
        logs.log(logging.ERROR, "a")
        clock.now += 30.0
        logs.log(logging.INFO, "b")
    assert lines(caplog) == [
        ("ERROR", "a"),
        ("ERROR", "a (repeated 1 times in 10 s)"),
        ("INFO", "b"),
    ]


def test_kinds_held_are_bounded(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    logs = LogCollapser(logger, interval=10.0, clock=clock, max_kinds=4)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for n in range(10):
            logs.log(logging.ERROR, "kind %d", n)
            logs.log(logging.ERROR, "kind %d", n)
    messages = [m for _, m in lines(caplog)]
    assert [m for m in messages if "repeated" not in m] == [f"kind {n}" for n in range(10)]
    assert len(logs._windows) <= 4
    logs.flush()
    assert sum("(repeated 1 times" in m for _, m in lines(caplog)) == 10


def test_levels_the_logger_ignores_cost_nothing(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    logs = LogCollapser(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logs.log(logging.INFO, "chatter")
        logs.flush()
    assert lines(caplog) == []
    assert logs._windows == {}
