"""The one owner of the tasks a unit spawns beside its main loops (structured concurrency).

A `TaskOwner` is bound to the unit's asyncio.TaskGroup: every task it spawns is a task of that
group, so the group's end cancels it and nothing outlives the unit; it is named (`owner:name`,
as asyncio and py-spy show it), bounded (`limit` at once: beyond it the work is dropped and
counted, never queued without end) and guarded: an exception is logged with the task's name and
counted (`failed`), never raised into the group, so one failing handler cannot end the unit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

_log = logging.getLogger(__name__)


class TaskOwner:
    """See the module docstring. `spawn` before `bind` (or after the group ended) drops."""

    def __init__(self, owner: str, limit: int) -> None:
        self.owner = owner
        self.limit = limit
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.spawned = 0
        self.failed = 0
        self.dropped = 0

    def bind(self, group: asyncio.TaskGroup) -> None:
        self._group = group

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Run `work` in the bound group; None (work closed, `dropped` counted) when unbound or
        at the limit."""
        if self._group is None or len(self._tasks) >= self.limit:
            work.close()
            self.dropped += 1
            return None
        guarded = self._guarded(work, name)
        try:
            task = self._group.create_task(guarded, name=f"{self.owner}:{name}")
        except RuntimeError:  # the group has ended or is shutting down: nothing new starts
            guarded.close()
            work.close()
            self.dropped += 1
            return None
        self.spawned += 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except Exception:  # logged and counted here; the group and its other tasks go on
            self.failed += 1
            _log.exception("%s: task %s failed (%d failed)", self.owner, name, self.failed)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
