"""localstripe for the payments and app tests: one server per session (with the test extension: Checkout,
portal, missing events), its keys, and webhook registration. The fixtures are registered by
tests/conftest.py; test modules import the constants and helpers from here (a module name of its own:
two ``conftest`` modules imported by name clash when test directories are run together)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import backends
import httpx
import pytest
from server_support import running

API_KEY = "sk_test_chargectl_payments_0123456789"
WEBHOOK_SECRET = "whsec_chargectl_test_secret_abcdef"
EXTENSION = Path(__file__).resolve().parent / "payments" / "localstripe_ext.py"


@pytest.fixture(scope="session")
def stripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """localstripe with ``localstripe_ext`` loaded; one per session (its state is shared: use unique uids)."""
    yield from running("localstripe", tmp_path_factory, extensions=EXTENSION)


@pytest.fixture
def stripe_http(stripe_server: backends.Server) -> Iterator[httpx.Client]:
    """Raw HTTP to the server, authenticated (for the test drivers and localstripe's config routes)."""
    with httpx.Client(base_url=stripe_server.url, auth=(API_KEY, ""), timeout=10) as client:
        yield client


def register_webhook(http: httpx.Client, url: str, secret: str = WEBHOOK_SECRET) -> None:
    """Point localstripe's event delivery at ``url`` (one id for all tests: the newest wins)."""
    http.post("/_config/webhooks/chargectl-tests", data={"url": url, "secret": secret}).raise_for_status()
