"""Run a service's ``serve()`` until SIGINT or SIGTERM asks it to stop (the CLI's blocking entry)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

__all__ = ["run_until_signalled"]


def run_until_signalled(serve: Callable[[], Awaitable[None]], request_stop: Callable[[], None]) -> None:
    """``asyncio.run(serve())`` with SIGINT/SIGTERM calling ``request_stop`` for a clean shutdown."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, request_stop)
        await serve()

    asyncio.run(main())
