"""Grouping, filtering and await cycles on hand-built snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from diag.analysis.task_groups import TaskQuery, await_cycles, group_tasks, task_view
from diag.errors import UsageError
from diag.model.task_snapshot import Wait

from .snapshots import POOL, fetchers_and_worker, snapshot, task


def test_identical_tasks_collapse_into_one_group_biggest_first() -> None:
    view = task_view(fetchers_and_worker(), TaskQuery(debug=1))
    assert view.grouped
    assert [g.count for g in view.tasks] == [3, 1]
    first = view.tasks[0]
    assert first.wait.kind == "semaphore"
    assert first.ids == (42, 43, 44)
    assert first.wait.seconds == 303.0 + 44  # the longest wait of the group


def test_debug_2_keeps_every_task() -> None:
    view = task_view(fetchers_and_worker(), TaskQuery(debug=2))
    assert not view.grouped
    assert [t.id for t in view.tasks] == [42, 43, 44, 9]


def test_same_stack_on_different_primitives_is_one_group_that_counts_them() -> None:
    other = Wait("semaphore", "Semaphore.acquire", replace(POOL, id="0x7f00b0"), seconds=1.0)
    (group,) = group_tasks((task(1), task(2, wait=other), task(3)))
    assert group.count == 3
    assert group.wait.primitive is None
    assert group.wait.detail == "Semaphore.acquire (on 2 distinct semaphores)"


def test_a_shared_primitive_stays_on_the_group() -> None:
    (group,) = group_tasks((task(1), task(2)))
    assert group.wait.primitive == POOL


def test_different_wait_reasons_are_different_groups() -> None:
    groups = group_tasks((task(1), task(2, wait=Wait("event", "Event.wait"))))
    assert len(groups) == 2


def test_hundred_thousand_tasks_read_as_a_handful_of_groups() -> None:
    tasks = tuple(task(i) for i in range(100_000))
    view = task_view(snapshot(*tasks), TaskQuery(debug=1))
    assert len(view.tasks) == 1 and view.tasks[0].count == 100_000
    assert len(view.tasks[0].ids) == 1000  # ids are capped, the count is not


@pytest.mark.parametrize(("query", "expected"), [
    (TaskQuery(debug=2, pattern="Worker"), [9]),
    (TaskQuery(debug=2, pattern=r"^Client\.pool$"), [42, 43, 44]),  # the primitive's label
    (TaskQuery(debug=2, pattern=r"client\.py"), [42, 43, 44]),
    (TaskQuery(debug=2, pattern="^fetch$"), [42, 43, 44]),
    (TaskQuery(debug=2, min_wait=346.0), [43, 44]),
    (TaskQuery(debug=2, states=("running",)), []),
    (TaskQuery(debug=2, limit=2), [42, 43]),
])
def test_filters(query: TaskQuery, expected: list[int]) -> None:
    assert [t.id for t in task_view(fetchers_and_worker(), query).tasks] == expected


def test_limit_is_stated_in_the_notes() -> None:
    view = task_view(fetchers_and_worker(), TaskQuery(debug=2, limit=1))
    assert view.notes == ("showing 1 of 4 tasks (--limit)",)


@pytest.mark.parametrize("query", [
    TaskQuery(debug=3), TaskQuery(pattern="(unclosed"), TaskQuery(states=("sleeping",)),
    TaskQuery(min_wait=-1.0), TaskQuery(limit=0),
])
def test_bad_queries_are_usage_errors(query: TaskQuery) -> None:
    with pytest.raises(UsageError):
        query.validate()


def test_await_cycle_is_found_once_from_its_smallest_id() -> None:
    a = task(5, wait=Wait("task", "await task", tasks=(7,)))
    b = task(7, wait=Wait("gather", "gather", tasks=(8, 5)))
    c = task(8, wait=Wait("sleep", "sleep"))
    d = task(9, wait=Wait("task", "await task", tasks=(5,)))  # waits on the cycle, is not in it
    assert await_cycles(snapshot(a, b, c, d)) == ((5, 7),)


def test_no_cycle_in_a_tree() -> None:
    a = task(1, wait=Wait("gather", "gather", tasks=(2, 3)))
    b = task(2, wait=Wait("task", "await task", tasks=(3,)))
    assert await_cycles(snapshot(a, b, task(3))) == ()


def test_tasks_awaiting_different_tasks_group_without_naming_one() -> None:
    waits = [Wait("task", "await task", tasks=(100 + i,)) for i in range(3)]
    (group,) = group_tasks(tuple(task(i, wait=w) for i, w in enumerate(waits)))
    assert group.wait.tasks == () and group.wait.detail == "await task (on 3 distinct tasks)"
