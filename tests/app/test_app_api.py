"""The app API on a real aiohttp server: every token rejection, bad input, limits, CORS, and the happy
paths against localstripe (sign-in hook, setup page, auto top-up settings, top-up page, portal)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backends
import httpx
import pytest
from app_support import KID, PROJECT, CertsServer, TokenMint, b64url
from payments_helpers import card, wait_for
from stripe_support import API_KEY, WEBHOOK_SECRET, register_webhook

from chargectl.common.clock import SystemClock
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.app.api import AppApi
from chargectl.services.app.ratelimit import client_address
from chargectl.services.app.server import AppServer, ThreadedServer
from chargectl.services.app.settings import AppSettings
from chargectl.services.app.tokens import CertCache
from chargectl.services.payments.ledger import Ledger
from chargectl.services.payments.settings import PaymentsSettings
from chargectl.services.payments.stripe_ops import StripeOps
from chargectl.services.payments.webhook import WebhookHandler

pytestmark = pytest.mark.integration

ORIGIN = "https://app.example.test"


@dataclass
class Rig:
    url: str
    store: SqliteStore
    server: AppServer
    stripe: httpx.Client
    mint: TokenMint
    certs: CertsServer

    def call(
        self, method: str, path: str, uid: str | None = None, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is None and uid is not None:
            token = self.mint.token(uid)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def customers(self, email: str) -> list[str]:
        resp = self.stripe.get("/v1/customers", params={"email": email, "limit": 100})
        resp.raise_for_status()
        return [c["id"] for c in resp.json()["data"]]


@pytest.fixture
def rig_limit() -> int:
    """Stripe calls per uid per minute (tests that make many calls parametrize it)."""
    return 5


@pytest.fixture
def rig_call_limit() -> int:
    """Calls of any /v1 route per uid per minute (one test floods reads)."""
    return 1000


@pytest.fixture
def rig_ip_limit() -> int:
    """Stripe calls per client address per minute (one test floods from one address)."""
    return 1000


@pytest.fixture
def rig(
    rig_limit: int,
    rig_ip_limit: int,
    rig_call_limit: int,
    tmp_path: Path,
    stripe_server: backends.Server,
    stripe_http: httpx.Client,
    mint: TokenMint,
    certs_server: CertsServer,
) -> Iterator[Rig]:
    clock = SystemClock()
    store = SqliteStore(tmp_path / "app.db")
    payments = PaymentsSettings(api_base=stripe_server.url, app_url=ORIGIN)
    settings = AppSettings(
        project_id=PROJECT,
        certs_url=certs_server.url,
        allowed_origins=(ORIGIN,),
        read_timeout_s=2.0,
        stripe_calls_per_minute=rig_limit,
        ip_calls_per_minute=rig_ip_limit,
        calls_per_minute=rig_call_limit,
        auto_topup_interval_s=0,
        max_body_bytes=4096,
    )
    ops = StripeOps.connect(API_KEY, store, clock, payments)
    server = AppServer(
        settings,
        clock,
        api=AppApi(store, ops, settings, clock),
        webhook=WebhookHandler(store, WEBHOOK_SECRET, clock),
        certs=CertCache(settings.certs_url, clock),
    )
    threaded = ThreadedServer(server)
    threaded.start()
    register_webhook(stripe_http, f"{threaded.url}/stripe/webhook")
    try:
        yield Rig(threaded.url, store, server, stripe_http, mint, certs_server)
    finally:
        threaded.stop()
        store.close()


def new_uid() -> str:
    return f"uid-{uuid.uuid4().hex[:12]}"


def assert_json_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in resp.text
    return str(body["error"])


# ----------------------------------------------------------------------------- token rejections


def _rejections(mint: TokenMint, uid: str) -> dict[str, str | None]:
    now = int(time.time())
    token = mint.token(uid)
    head, payload, sig = token.split(".")
    forged_payload = mint.token("someone-else").split(".")[1]
    import base64

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    import hashlib
    import hmac

    hs_input = f"{b64({'alg': 'HS256', 'kid': KID})}.{payload}"
    hs_sig = (
        base64.urlsafe_b64encode(hmac.new(mint.cert_pem.encode(), hs_input.encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    return {
        "no header": None,
        "empty bearer": "",
        "garbage": "not-a-token",
        "two parts": f"{head}.{payload}",
        "bad base64": f"{head}.{payload}!.{sig}",
        "alg none": f"{b64({'alg': 'none', 'kid': KID})}.{payload}.",
        "alg HS256 keyed with the certificate": f"{hs_input}.{hs_sig}",
        "alg RS512 header": mint.token(uid, header={"alg": "RS512", "kid": KID}),
        "no kid": mint.token(uid, header={"alg": "RS256"}),
        "unknown kid": mint.token(uid, header={"alg": "RS256", "kid": "other-kid"}),
        "signed by another key": mint.token(uid, key=mint.other_key),
        "payload swapped after signing": f"{head}.{forged_payload}.{sig}",
        "signature truncated": f"{head}.{payload}.{sig[:-10]}",
        "other project (aud)": mint.token(uid, aud="another-project"),
        "wrong issuer": mint.token(uid, iss="https://securetoken.google.com/another-project"),
        "no issuer": mint.token(uid, iss=...),
        "expired": mint.token(uid, exp=now - 1),
        "no exp": mint.token(uid, exp=...),
        "exp a string": mint.token(uid, exp=str(now + 3600)),
        "issued in the future": mint.token(uid, iat=now + 600),
        "no iat": mint.token(uid, iat=...),
        "signed in in the future": mint.token(uid, auth_time=now + 600),
        "empty sub": mint.token(uid, sub=""),
        "no sub": mint.token(uid, sub=...),
        "sub not a string": mint.token(uid, sub=12345),
        "sub with spaces": mint.token(uid, sub="a b"),
        # A uid is a document id: a path separator, a control character or a reserved name would
        # address another document (another user's) or none.
        "sub with a slash": mint.token(uid, sub=f"{uid}/ledger/x"),
        "sub '..'": mint.token(uid, sub=".."),
        "sub with a NUL": mint.token(uid, sub=f"{uid}\x00"),
        "sub with an escape sequence": mint.token(uid, sub=f"{uid}\x1b[2J"),
        "sub with a line separator": mint.token(uid, sub=f"{uid}\u2028x"),
        "sub a reserved name": mint.token(uid, sub="__name__"),
        "sub too long": mint.token(uid, sub="u" * 129),
        # Nested past the JSON parser's recursion limit: a RecursionError, not a JSONDecodeError.
        "header nested 1500 deep": f"{b64url(('[' * 1500 + ']' * 1500).encode())}.{payload}.{sig}",
    }


def test_every_bad_token_is_refused_with_401_and_nothing_is_done(rig: Rig) -> None:
    uid = new_uid()
    for label, token in _rejections(rig.mint, uid).items():
        headers = {} if token is None else {"Authorization": f"Bearer {token}".strip()}
        for method, path in (("POST", "/v1/account"), ("GET", "/v1/account"), ("POST", "/v1/topup")):
            resp = httpx.request(
                method,
                f"{rig.url}{path}",
                headers=headers,
                json={"amount_minor": 1000, "currency": "gbp"},
                timeout=30,
            )
            assert resp.status_code == 401, f"{label} {method} {path}: {resp.status_code} {resp.text}"
            assert_json_error(resp, 401)
    # Nothing was created for the uid or anyone else the forged tokens named.
    assert rig.store.list_users() == []
    assert rig.customers(f"{uid}@example.test") == []
    assert rig.customers("someone-else@example.test") == []
    # The same uid with a good token works (the rejections were about the tokens).
    assert rig.call("POST", "/v1/account", uid).status_code == 200


def test_basic_auth_and_uid_in_the_body_are_not_identities(rig: Rig) -> None:
    victim = new_uid()
    resp = rig.call("GET", "/v1/account", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert_json_error(resp, 401)
    me = new_uid()
    assert (
        rig.call("POST", "/v1/account", me, json={"uid": victim, "email": "evil@example.test"}).status_code
        == 200
    )
    assert rig.store.get_user(victim) is None
    user = rig.store.get_user(me)
    assert user is not None and user.email == f"{me}@example.test"


def test_an_unverified_email_gets_no_stripe_customer(rig: Rig) -> None:
    """Anyone can sign up with a victim's address (email and password, not yet verified): no Stripe
    customer, receipts or cards are tied to it until it is verified."""
    uid = new_uid()
    victim = "victim@example.test"
    token = rig.mint.token(uid, email=victim, email_verified=False)
    assert_json_error(rig.call("POST", "/v1/account", token=token), 403)
    assert rig.customers(victim) == [] and rig.store.get_user(uid) is None
    # Verified, the same uid gets its account.
    verified = rig.mint.token(uid, email=victim, email_verified=True)
    resp = rig.call("POST", "/v1/account", token=verified)
    assert resp.status_code == 200 and rig.customers(victim) == [resp.json()["customer_id"]]


def test_certificates_are_fetched_once_while_cached(rig: Rig) -> None:
    for _ in range(5):
        assert rig.call("GET", "/v1/account", new_uid()).status_code == 404
    assert rig.certs.hits == 1


async def test_certificate_cache_follows_max_age_and_refetches_for_a_new_key(mint: TokenMint) -> None:
    from chargectl.common.clock import ManualClock

    clock = ManualClock()
    with CertsServer({KID: mint.cert_pem}, max_age_s=60) as server:
        cache = CertCache(server.url, clock)
        assert KID in await cache.keys(KID)
        clock.advance(59)
        await cache.keys(KID)
        assert server.hits == 1
        clock.advance(2)
        await cache.keys(KID)
        assert server.hits == 2
        # A key id we do not know (a rotation) refetches, but not more often than every 30 s.
        server.certs = {KID: mint.cert_pem, "new": mint.cert_pem}
        assert "new" not in await cache.keys("new")
        clock.advance(31)
        assert "new" in await cache.keys("new")
        assert server.hits == 3


# ----------------------------------------------------------------------------- bad input and limits


@pytest.mark.parametrize("rig_limit", [1000])
def test_bad_bodies_get_4xx_json_and_change_nothing(rig: Rig) -> None:
    uid = new_uid()
    assert rig.call("POST", "/v1/account", uid).status_code == 200
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/v1/topup", b"{not json", 400),
        ("POST", "/v1/topup", b"[1, 2]", 400),
        ("POST", "/v1/topup", b"\xff\xfe", 400),
        ("POST", "/v1/topup", {"amount_minor": "1000", "currency": "gbp"}, 400),
        ("POST", "/v1/topup", {"amount_minor": 10.5, "currency": "gbp"}, 400),
        ("POST", "/v1/topup", {"amount_minor": True, "currency": "gbp"}, 400),
        ("POST", "/v1/topup", {"amount_minor": -500, "currency": "gbp"}, 400),
        ("POST", "/v1/topup", {"amount_minor": 10**12, "currency": "gbp"}, 400),
        ("POST", "/v1/topup", {"amount_minor": 1000, "currency": "xyz"}, 400),
        ("POST", "/v1/topup", {"amount_minor": 1000, "currency": "usd"}, 400),
        ("POST", "/v1/topup", {"amount_minor": 1000}, 400),
        ("POST", "/v1/topup", {"amount_minor": 20, "currency": "gbp"}, 400),
        ("PUT", "/v1/auto-topup", {"threshold_minor": "x", "amount_minor": 1000}, 400),
        ("PUT", "/v1/auto-topup", {"threshold_minor": 500, "amount_minor": 10}, 400),
        ("POST", "/v1/portal", {"return_url": "https://evil.example/phish"}, 400),
        ("POST", "/v1/portal", {"return_url": "javascript:alert(1)"}, 400),
        ("POST", "/v1/portal", {"return_url": f"{ORIGIN}@evil.example/"}, 400),
        ("POST", "/v1/portal", {"return_url": 42}, 400),
        ("POST", "/v1/topup", b"[" * 2000 + b"]" * 2000, 400),  # past the parser's recursion limit
        ("POST", "/v1/topup", b"x" * 5000, 413),
        ("GET", "/v1/nothing-here", None, 404),
        ("GET", "/nothing", None, 404),
        ("PATCH", "/v1/account", None, 405),
    ]
    for method, path, body, status in cases:
        kw: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"content": body}
        message = assert_json_error(rig.call(method, path, uid, **kw), status)
        if body == {"amount_minor": 20, "currency": "gbp"}:
            assert "below the minimum" in message
    assert Ledger(rig.store).history(uid) == []


def test_slow_or_malformed_clients_are_cut_off(rig: Rig) -> None:
    host, port = rig.server.address

    def raw(data: bytes, wait_for_close: bool = True) -> bytes:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(data)
            out = b""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                out += chunk
                if not wait_for_close and b"\r\n\r\n" in out:
                    return out
            raise AssertionError("the server never closed the connection")

    # Headers that never finish: closed after read_timeout_s, without an answer.
    assert raw(b"POST /v1/account HTTP/1.1\r\nHost: x\r\n") == b""
    # A body that never arrives: 408 (or closed), never a hang.
    slow = raw(
        b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", wait_for_close=False
    )
    assert slow == b"" or slow.startswith(b"HTTP/1.1 408")
    # A Content-Length that is not a number: a 400 answer (aiohttp's own, plain text), then closed.
    odd = raw(
        "POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n".encode(), wait_for_close=False
    )
    assert odd.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), odd
    assert b"Traceback" not in odd
    # The server still serves.
    assert httpx.get(f"{rig.url}/healthz", timeout=30).json() == {"status": "ok"}


def test_stripe_routes_are_rate_limited_per_uid(rig: Rig) -> None:
    uid, other = new_uid(), new_uid()
    assert rig.call("POST", "/v1/account", uid).status_code == 200  # 1 of 5
    statuses = [rig.call("POST", "/v1/portal", uid, json={}).status_code for _ in range(5)]
    assert statuses[:4] == [200, 200, 200, 200]
    assert statuses[4] == 429
    limited = rig.call("POST", "/v1/setup", uid)
    assert_json_error(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    # Others are not affected, and reads are not limited.
    assert rig.call("POST", "/v1/account", other).status_code == 200
    assert rig.call("GET", "/v1/account", uid).status_code == 200


@pytest.mark.parametrize(("rig_limit", "rig_ip_limit"), [(5, 3)])
def test_a_flood_of_fresh_accounts_from_one_address_is_limited(rig: Rig) -> None:
    """Anyone can sign up many times: each new uid has a full budget, so the address has one too. Past it,
    no Stripe customer is made; another address is not affected; a client's own X-Forwarded-For is no
    way out (no proxy is configured in front)."""
    uids = [new_uid() for _ in range(5)]
    for uid in uids[:3]:
        assert rig.call("POST", "/v1/account", uid).status_code == 200
    limited = rig.call("POST", "/v1/account", uids[3])
    assert_json_error(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    spoofed = rig.call("POST", "/v1/account", uids[3], headers={"X-Forwarded-For": "203.0.113.9"})
    assert_json_error(spoofed, 429)
    assert rig.customers(f"{uids[3]}@example.test") == []
    assert rig.store.get_user(uids[3]) is None
    # The same server, reached from another loopback address: its own budget.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=30) as other:
        resp = other.post(
            f"{rig.url}/v1/account", headers={"Authorization": f"Bearer {rig.mint.token(uids[4])}"}
        )
    assert resp.status_code == 200, resp.text
    assert rig.customers(f"{uids[4]}@example.test") == [resp.json()["customer_id"]]
    # Reads call no Stripe and are not limited by address.
    assert rig.call("GET", "/v1/account", uids[0]).status_code == 200
    assert len(rig.store.list_users()) == 4


@pytest.mark.parametrize("rig_call_limit", [5])
def test_a_flood_of_reads_from_one_user_is_limited(rig: Rig) -> None:
    """Each account read sums the user's whole ledger from the store, whose reads are billed: one
    signed-in user looping on GET /v1/account must not run up the operator's bill."""
    uid, other = new_uid(), new_uid()
    assert rig.call("POST", "/v1/account", uid).status_code == 200  # 1 of 5
    assert [rig.call("GET", "/v1/account", uid).status_code for _ in range(4)] == [200] * 4
    limited = rig.call("GET", "/v1/account", uid)
    assert_json_error(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert_json_error(rig.call("DELETE", "/v1/auto-topup", uid), 429)
    # Another user is not affected.
    assert rig.call("POST", "/v1/account", other).status_code == 200
    assert rig.call("GET", "/v1/account", other).status_code == 200


def test_the_client_address_is_the_peer_unless_proxies_are_trusted() -> None:
    assert client_address("198.51.100.7", "203.0.113.9", 0) == "198.51.100.7"  # header ignored
    # One trusted proxy (Cloud Run): the address it appended, whatever the client wrote before it.
    assert client_address("10.0.0.1", "203.0.113.9, 198.51.100.7", 1) == "198.51.100.7"
    assert client_address("10.0.0.1", "198.51.100.7", 1) == "198.51.100.7"
    assert client_address("10.0.0.1", "1.1.1.1, 198.51.100.7, 10.0.0.2", 2) == "198.51.100.7"
    # Too few entries or not an address: the peer (never a name the client made up).
    assert client_address("10.0.0.1", "", 1) == "10.0.0.1"
    assert client_address("10.0.0.1", "198.51.100.7", 2) == "10.0.0.1"
    assert client_address("10.0.0.1", "evil, not-an-ip", 1) == "10.0.0.1"
    # IPv6: one bucket per /64; an IPv4-mapped address is its IPv4 address.
    assert client_address("2001:db8:1:2:aaaa::1", "", 0) == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:2:bbbb::9", "", 0) == "2001:db8:1:2::/64"
    assert client_address("::ffff:198.51.100.7", "", 0) == "198.51.100.7"


def test_cors_for_allowed_origins_only(rig: Rig) -> None:
    uid = new_uid()
    pre = httpx.options(
        f"{rig.url}/v1/account",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=30,
    )
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    evil = httpx.options(f"{rig.url}/v1/account", headers={"Origin": "https://evil.example"}, timeout=30)
    assert evil.status_code == 403 and "Access-Control-Allow-Origin" not in evil.headers
    resp = rig.call("POST", "/v1/account", uid, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    ok = rig.call("GET", "/v1/account", uid, headers={"Origin": ORIGIN})
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN


# ----------------------------------------------------------------------------- happy paths


def test_sign_in_creates_one_customer_however_concurrently_called(rig: Rig) -> None:
    uid = new_uid()
    results: list[httpx.Response] = []
    barrier = threading.Barrier(4)

    def sign_in() -> None:
        barrier.wait(timeout=30)
        results.append(rig.call("POST", "/v1/account", uid))

    threads = [threading.Thread(target=sign_in) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200] * 4
    customer_ids = {r.json()["customer_id"] for r in results}
    assert len(customer_ids) == 1
    assert rig.customers(f"{uid}@example.test") == list(customer_ids)
    again = rig.call("POST", "/v1/account", uid).json()
    assert again["customer_id"] in customer_ids
    view = rig.call("GET", "/v1/account", uid).json()
    assert view == again
    assert view["uid"] == uid and view["currency"] == "gbp" and view["balances_minor"] == {"gbp": 0}
    assert view["needs_payment_action"] is False and view["auto_topup"]["enabled"] is False


def test_setup_then_auto_topup_then_checkout_topup_credits_via_the_webhook(rig: Rig) -> None:
    uid = new_uid()
    assert rig.call("GET", "/v1/account", uid).status_code == 404
    assert rig.call("POST", "/v1/account", uid).status_code == 200
    # No saved card yet: auto top-up cannot be switched on.
    assert_json_error(
        rig.call("PUT", "/v1/auto-topup", uid, json={"threshold_minor": 500, "amount_minor": 1000}), 409
    )
    setup = rig.call("POST", "/v1/setup", uid)
    assert setup.status_code == 200 and setup.json()["url"].startswith("http")
    rig.stripe.post(
        f"/_test/checkout/sessions/{setup.json()['session_id']}/complete",
        data={"payment_method": card(rig.stripe, "4242424242424242")},
    ).raise_for_status()
    wait_for(
        "the card saved by the webhook", lambda: rig.call("GET", "/v1/account", uid).json()["has_saved_card"]
    )
    on = rig.call("PUT", "/v1/auto-topup", uid, json={"threshold_minor": 500, "amount_minor": 1000})
    assert on.status_code == 200, on.text
    assert on.json()["auto_topup"] == {
        "enabled": True,
        "threshold_minor": 500,
        "amount_minor": 1000,
        "declined": False,
        "decline_reason": "",
    }
    topup = rig.call("POST", "/v1/topup", uid, json={"amount_minor": 1500, "currency": "GBP"})
    assert topup.status_code == 200, topup.text
    assert topup.json()["amount_minor"] == 1500
    rig.stripe.post(
        f"/_test/checkout/sessions/{topup.json()['session_id']}/complete",
        data={"payment_method": card(rig.stripe, "4242424242424242")},
    ).raise_for_status()
    wait_for(
        "the top-up credited",
        lambda: rig.call("GET", "/v1/account", uid).json()["balances_minor"] == {"gbp": 1500},
    )
    assert Ledger(rig.store).balance(uid, "gbp") == 1500
    off = rig.call("DELETE", "/v1/auto-topup", uid)
    assert off.status_code == 200 and off.json()["auto_topup"]["enabled"] is False
    portal = rig.call("POST", "/v1/portal", uid, json={"return_url": f"{ORIGIN}/account"})
    assert portal.status_code == 200 and portal.json()["url"].startswith("http")


def test_two_hundred_slow_connections_do_not_starve_the_server(rig: Rig) -> None:
    host, port = rig.server.address
    slow = [socket.create_connection((host, port), timeout=30) for _ in range(200)]
    try:
        for sock in slow:
            sock.sendall(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\n")  # and never more
        # Served at once while they hang...
        assert httpx.get(f"{rig.url}/healthz", timeout=10).status_code == 200
        uid = new_uid()
        assert rig.call("POST", "/v1/account", uid).status_code == 200
        # ...and every one of them is closed by the server after read_timeout_s.
        deadline = time.monotonic() + 60
        for sock in slow:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(1024) == b""
    finally:
        for sock in slow:
            sock.close()
