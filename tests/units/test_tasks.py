"""The unit's task owner (redy.units.tasks): a failing task is logged and counted and its group
goes on, work beyond the limit or outside a running group is dropped and counted, and every
task ends with its group."""

from __future__ import annotations

import asyncio
import logging

import pytest

from redy.units.tasks import TaskOwner


async def test_a_failing_task_is_counted_and_the_group_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = TaskOwner("n1.governance", limit=4)
    done: list[str] = []

    async def fails() -> None:
        raise ValueError("a peer's garbage")

    async def works() -> None:
        await asyncio.sleep(0)
        done.append("ok")

    with caplog.at_level(logging.ERROR):
        async with asyncio.TaskGroup() as group:
            owner.bind(group)
            failing = owner.spawn(fails(), "answer evil")
            owner.spawn(works(), "state-ack")
    assert failing is not None and failing.get_name() == "n1.governance:answer evil"
    assert done == ["ok"] and owner.failed == 1 and owner.spawned == 2
    assert "task answer evil failed" in caplog.text


async def test_beyond_the_limit_or_unbound_work_is_dropped_and_closed() -> None:
    owner = TaskOwner("n1.peers", limit=2)
    unbound = asyncio.sleep(1)
    assert owner.spawn(unbound, "early") is None and owner.dropped == 1
    release = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        owner.bind(group)
        assert owner.spawn(release.wait(), "a") and owner.spawn(release.wait(), "b")
        third = release.wait()
        assert owner.spawn(third, "c") is None and owner.dropped == 2
        assert len(owner) == 2
        release.set()
    assert len(owner) == 0
    assert owner.spawn(asyncio.sleep(0), "late") is None  # the group has ended


async def test_tasks_end_with_their_group() -> None:
    owner = TaskOwner("n1.market", limit=8)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def unit() -> None:
        async with asyncio.TaskGroup() as group:
            owner.bind(group)
            owner.spawn(forever(), "push")
            await asyncio.Event().wait()

    running = asyncio.create_task(unit())
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert len(owner) == 0 and owner.failed == 0
