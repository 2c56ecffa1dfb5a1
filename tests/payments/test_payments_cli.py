"""``chargectl payments`` end to end against localstripe: every command, --json, errors, and no secrets in logs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import backends
import httpx
import pytest
from payments_helpers import card, event, sign, wait_for
from stripe_support import API_KEY, WEBHOOK_SECRET
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.ledger import Ledger

pytestmark = pytest.mark.integration

CHARGECTL = Path(sys.executable).parent / "chargectl"


@pytest.fixture
def cli_env(
    tmp_path: Path, stripe_server: backends.Server, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    env = {
        "CHARGECTL_STATE_DIR": str(tmp_path / "state"),
        "CHARGECTL_PAYMENTS__API_BASE": stripe_server.url,
        "CHARGECTL_PAYMENTS__APP_URL": "https://app.example.test",
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "COLUMNS": "400",  # the error line is one line; rich would wrap it at 80 columns
    }
    monkeypatch.delenv("CHARGECTL_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(autouse=True)
def _restore_chargectl_logger() -> Iterator[None]:
    """The CLI's root callback installs its stderr handler and stops propagation; undo that after each test."""
    logger = logging.getLogger("chargectl")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[_Capture]:
    """Every record at DEBUG: chargectl's own logger (which does not propagate) and the root (stripe, httpx)."""
    caplog.set_level(logging.DEBUG)
    capture = _Capture()
    ours = logging.getLogger("chargectl")
    ours.addHandler(capture)
    logging.getLogger().addHandler(capture)
    try:
        yield capture
    finally:
        ours.removeHandler(capture)
        logging.getLogger().removeHandler(capture)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-v", "payments", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def _json(*args: str) -> dict:
    code, out = _run(*args, "--json")
    assert code == 0, out
    return json.loads(out)


def test_every_command_works_and_logs_carry_no_secret_or_url(
    cli_env: dict[str, str], logs: _Capture, stripe_http: httpx.Client, uid: str
) -> None:
    created = _json("customer", "create", "--uid", uid, "--email", f"{uid}@example.test", "--name", "Grace")
    assert created["created"] is True and created["customer_id"].startswith("cus_")
    again = _json("customer", "create", "--uid", uid, "--email", f"{uid}@example.test")
    assert again == {**created, "created": False}

    portal = _json("portal", uid, "--return-url", "https://app.example.test/back")
    assert portal["url"].startswith(cli_env["CHARGECTL_PAYMENTS__API_BASE"])
    code, out = _run("portal", uid)
    assert code == 0 and out.strip().startswith("http")
    plain_portal_url = out.strip()

    setup = _json("setup", uid)
    setup_session = stripe_http.get(f"/v1/checkout/sessions/{setup['session_id']}").json()
    assert setup_session["mode"] == "setup" and setup_session["customer"] == created["customer_id"]

    topup = _json("topup", uid, "12.50")
    assert (topup["amount_minor"], topup["currency"]) == (1250, "gbp")
    session = stripe_http.get(f"/v1/checkout/sessions/{topup['session_id']}").json()
    assert session["amount_total"] == 1250 and session["metadata"]["uid"] == uid

    pm = card(stripe_http, "4242424242424242")
    stripe_http.post(
        f"/v1/payment_methods/{pm}/attach", data={"customer": created["customer_id"]}
    ).raise_for_status()
    charged = _json("charge", uid, "5", "--entry-id", f"manual-{uid}")
    assert charged["status"] == "succeeded" and charged["amount_minor"] == 500
    assert charged["needs_payment_action"] is False

    shown = _json("customer", "show", uid)
    assert shown["customer_id"] == created["customer_id"] and shown["balance_minor"] == 0
    # Everything went to the shared store under the state dir, where the hub reads balances.
    shared = SqliteStore(Path(cli_env["CHARGECTL_STATE_DIR"]) / "chargectl.db")
    try:
        assert shared.get_user(uid).stripe_customer_id == created["customer_id"]  # type: ignore[union-attr]
    finally:
        shared.close()
    assert _json("balance", uid) == {"user_id": uid, "balances_minor": {"gbp": 0}}

    secrets = [API_KEY, WEBHOOK_SECRET, portal["url"], plain_portal_url, setup["url"], topup["url"]]
    assert logs.lines, "nothing was logged at all: the capture is broken"
    assert any(uid in line for line in logs.lines)
    for line in logs.lines:
        for secret in secrets:
            assert secret not in line


def test_bad_input_is_one_line_and_exit_1(cli_env: dict[str, str], uid: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CHARGECTL), "payments", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **cli_env},
            timeout=60,
        )

    assert run("customer", "create", "--uid", uid, "--email", f"{uid}@example.test").returncode == 0
    cases = {
        ("topup", uid, "0.20"): "below the minimum top-up of 5.00 GBP",
        ("topup", uid, "5.001"): "too many decimals",
        ("topup", uid, "five"): "is not a number",
        ("topup", uid, "10", "--currency", "xyz"): "unsupported currency",
        ("charge", uid, "10"): "has no saved card",
        ("portal", "nobody-here"): "no user 'nobody-here'",
        ("customer", "create", "--uid", "x y", "--email", "a@b.c"): "invalid user id",
    }
    for args, message in cases.items():
        proc = run(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    no_key = subprocess.run(
        [str(CHARGECTL), "payments", "portal", uid],
        capture_output=True,
        text=True,
        env={k: v for k, v in {**os.environ, **cli_env}.items() if k != "STRIPE_API_KEY"},
        timeout=60,
    )
    assert no_key.returncode == 1 and "STRIPE_API_KEY" in no_key.stderr


def test_charge_needing_authentication_exits_2_and_flags(
    cli_env: dict[str, str], stripe_http: httpx.Client, uid: str
) -> None:
    customer = _json("customer", "create", "--uid", uid, "--email", f"{uid}@example.test")["customer_id"]
    pm = card(stripe_http, "4000002760003184")
    stripe_http.post(f"/v1/payment_methods/{pm}/attach", data={"customer": customer}).raise_for_status()
    code, out = _run("charge", uid, "7.00", "--json")
    assert code == 2
    result = json.loads(out)
    assert result["needs_payment_action"] is True
    shown = _json("customer", "show", uid)
    assert (
        shown["needs_payment_action"] is True
        and shown["payment_action_intent_id"] == result["payment_intent_id"]
    )


def test_webhook_command_serves_verified_events(
    cli_env: dict[str, str], uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [payments] store_path: a store of its own instead of the shared one.
    cli_env = {**cli_env, "CHARGECTL_PAYMENTS__STORE_PATH": str(tmp_path / "payments-only.db")}
    monkeypatch.setenv("CHARGECTL_PAYMENTS__STORE_PATH", cli_env["CHARGECTL_PAYMENTS__STORE_PATH"])
    store = SqliteStore(cli_env["CHARGECTL_PAYMENTS__STORE_PATH"])
    _json("customer", "create", "--uid", uid, "--email", f"{uid}@example.test")
    customer = store.get_user(uid).stripe_customer_id  # type: ignore[union-attr]
    port = backends.free_port()
    proc = subprocess.Popen(
        [str(CHARGECTL), "payments", "webhook", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **cli_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("the webhook server", healthy)
        obj = {
            "id": "pi_cli_1",
            "object": "payment_intent",
            "amount": 900,
            "amount_received": 900,
            "currency": "gbp",
            "customer": customer,
            "status": "succeeded",
            "metadata": {"uid": uid, "chargectl_purpose": "offsession_topup"},
        }
        body = event("evt_cli_1", "payment_intent.succeeded", obj)
        ok = httpx.post(url, content=body, headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)})
        assert ok.status_code == 200 and ok.json()["action"] == "credited"
        bad = httpx.post(url, content=body, headers={"Stripe-Signature": sign(body, "whsec_wrong")})
        assert bad.status_code == 400
        assert Ledger(store).balance(uid) == 900
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        store.close()
    assert proc.returncode == 0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert WEBHOOK_SECRET not in stderr and API_KEY not in stderr


def test_webhook_without_secret_refuses_to_start(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    result = CliRunner().invoke(app, ["payments", "webhook", "--port", "0"])
    assert result.exit_code != 0 and "STRIPE_WEBHOOK_SECRET" in str(result.exception)
