"""Run localstripe bound to 127.0.0.1 only, starting from scratch, keeping state in memory.

The ``localstripe`` CLI binds every interface and pickles its whole state to the fixed path
``/tmp/localstripe.pickle`` after every request (parallel instances overwrite each other). Here the
store never touches disk. ``--extensions MODULE`` imports a module whose ``install(app)`` adds
routes (tests use it for the Stripe endpoints localstripe lacks).
"""

from __future__ import annotations

import argparse
import importlib
import logging

from aiohttp import web
from localstripe import resources
from localstripe.server import app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--extensions", default=None, help="module with install(app) adding routes")
    args = ap.parse_args()
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    resources.store.clear()
    if args.extensions:
        importlib.import_module(args.extensions).install(app)
    logging.basicConfig(level=logging.WARNING)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
