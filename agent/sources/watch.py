"""watchfiles as a wake-up hint (SPEC §5.3: a hint, not the clock).

The watcher watches the directories the last discovery computed, collects the paths that changed
and wakes the tail loop; it is restarted when the directories change. When inotify is not
available (watch limits, network filesystems) it says so once and the tail loop's sweep polls.
"""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("trackd.watch")

#: Directories to watch and whether recursively (a `**` glob).
WatchDirs = tuple[list[str], bool]


class Watcher:
    """Collects changed paths for the tail loop and wakes it."""

    def __init__(self, wake: asyncio.Event, polling_every: float) -> None:
        self._wake = wake
        self._polling_every = polling_every
        self._rewatch = asyncio.Event()
        self._watched: WatchDirs = ([], False)
        #: The directories the last discovery wants watched (computed off the event loop).
        self.wanted: WatchDirs = ([], False)
        #: Paths reported since the tail loop last took them.
        self.changed: set[str] = set()
        #: Whether inotify works (else the tail loop's sweep is the only clock).
        self.working = False

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def want(self, dirs: WatchDirs) -> None:
        """The directories to watch now; the watcher restarts when they changed."""
        self.wanted = dirs
        if self.wanted != self._watched:
            self._rewatch.set()

    def restart(self) -> None:
        self._rewatch.set()

    async def run(self, started: asyncio.Event, stop: asyncio.Event) -> None:
        """Until `stop`: watch, report, restart on `want` changes or failure."""
        import watchfiles

        await started.wait()  # the first discovery computed the directories
        while not stop.is_set():
            self._rewatch.clear()
            self._watched = self.wanted
            dirs, recursive = self._watched
            if not dirs:
                await self._wait_rewatch(5.0)
                continue
            try:
                self.working = True
                async for changes in watchfiles.awatch(
                    *dirs,
                    watch_filter=None,
                    stop_event=self._rewatch,
                    debounce=50,
                    step=20,
                    recursive=recursive,
                ):
                    self.changed.update(path for _change, path in changes)
                    self._wake.set()
            except (OSError, RuntimeError) as exc:
                self.working = False
                log.warning(
                    "watch_unavailable",
                    dirs=dirs,
                    error=str(exc),
                    fallback=f"polling every file each {self._polling_every}s",
                    hint="raise fs.inotify.max_user_watches, or ignore on network filesystems",
                )
                await self._wait_rewatch(30.0)

    async def _wait_rewatch(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._rewatch.wait(), timeout=seconds)
        except TimeoutError:
            pass
