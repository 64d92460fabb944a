"""Periodic work: the resync (every InferenceServer reconciled every `resync_seconds`, which
repairs drift that no watch event announced and recomputes the status), the download progress
refresh, and the node label sweep.

Why not `@kopf.timer`: kopf marks every timer and daemon as needing its finalizer, with no
option to turn that off (kopf issue #1074), so each InferenceServer would carry
`radixserve.io/operator` and, with the operator stopped or uninstalled, deleting it (or its
namespace) would hang. Without the finalizer kopf's timers would leak for objects deleted
without a `deletionTimestamp`. So this is one asyncio task per operator that lists the served
InferenceServers; it is started by a kopf startup handler and ends with the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from radixserve.operator import nodes
from radixserve.operator.controller import Controller, model_state
from radixserve.operator.metrics import TRIGGER_RESYNC
from radixserve.operator.reconcile import CR_TYPE

logger = logging.getLogger(__name__)


class PeriodicWork:
    def __init__(self, controller: Controller, sweeper: nodes.LabelSweeper) -> None:
        self._controller = controller
        self._sweeper = sweeper
        config = controller.config
        self._intervals = {"resync": config.resync_seconds, "progress": config.progress_seconds}
        now = time.monotonic()
        self._due = {what: now + seconds for what, seconds in self._intervals.items() if seconds > 0}

    @property
    def enabled(self) -> bool:
        return bool(self._due)

    def _list(self) -> list[dict[str, Any]]:
        api = self._controller.client()
        namespaces = self._controller.config.namespaces
        if not namespaces:
            return api.list_objects(CR_TYPE, None)
        return [body for ns in namespaces for body in api.list_objects(CR_TYPE, ns)]

    def run_once(self, resync: bool, progress: bool) -> None:
        """One round (in a worker thread): a failure for one InferenceServer does not stop the others."""
        controller = self._controller
        for body in self._list():
            meta = body.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            try:
                if resync:
                    controller.reconcile(body, TRIGGER_RESYNC)
                elif progress and model_state(body.get("status") or {}) in ("Pending", "Downloading"):
                    controller.refresh_status(str(meta.get("namespace")), str(meta.get("name")))
            except Exception as exc:
                logger.warning("periodic %s of %s/%s failed: %s", "resync" if resync else "progress refresh",
                               meta.get("namespace"), meta.get("name"), exc)
        if resync and controller.config.defaults.label_nodes:
            self._sweeper.maybe_sweep(controller.client())

    async def run(self) -> None:
        while self._due:
            await asyncio.sleep(max(0.0, min(self._due.values()) - time.monotonic()))
            now = time.monotonic()
            due = {what for what, at in self._due.items() if at <= now}
            for what in due:
                self._due[what] = now + self._intervals[what]
            try:
                await asyncio.to_thread(self.run_once, "resync" in due, "progress" in due)
            except Exception as exc:  # e.g. the list failed: try again at the next interval
                logger.warning("periodic work failed: %s", exc)
