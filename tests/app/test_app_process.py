"""``chargectl app serve`` as a real process: health, a refused token, the sign-in hook against localstripe,
a signed webhook delivery, clean exit on SIGTERM, and no secrets in its output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import backends
import httpx
import pytest
from app_support import PROJECT, CertsServer, TokenMint
from payments_helpers import event, sign, wait_for
from stripe_support import API_KEY, WEBHOOK_SECRET
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.payments.ledger import Ledger

pytestmark = pytest.mark.integration

CHARGECTL = Path(sys.executable).parent / "chargectl"


def test_app_serve_runs_as_a_process(
    tmp_path: Path, stripe_server: backends.Server, mint: TokenMint, certs_server: CertsServer
) -> None:
    port = backends.free_port()
    store_path = tmp_path / "state" / "chargectl.db"
    env = {
        **os.environ,
        "CHARGECTL_STATE_DIR": str(tmp_path / "state"),
        "CHARGECTL_APP__PROJECT_ID": PROJECT,
        "CHARGECTL_APP__CERTS_URL": certs_server.url,
        "CHARGECTL_APP__ALLOWED_ORIGINS": '["https://app.example.test"]',
        "CHARGECTL_PAYMENTS__API_BASE": stripe_server.url,
        "CHARGECTL_PAYMENTS__APP_URL": "https://app.example.test",
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    env.pop("CHARGECTL_CONFIG", None)
    proc = subprocess.Popen(
        [str(CHARGECTL), "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    uid = f"uid-{uuid.uuid4().hex[:10]}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"app serve exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            try:
                return httpx.get(f"{url}/healthz", timeout=2).json() == {"status": "ok"}
            except httpx.TransportError:
                return False

        wait_for("chargectl app serve", healthy, timeout_s=60)
        refused = httpx.post(f"{url}/v1/account", headers={"Authorization": "Bearer x.y.z"}, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]
        signed_in = httpx.post(
            f"{url}/v1/account", headers={"Authorization": f"Bearer {mint.token(uid)}"}, timeout=60
        )
        assert signed_in.status_code == 200, signed_in.text
        customer = signed_in.json()["customer_id"]
        assert customer.startswith("cus_")
        body = event(
            "evt_proc_1",
            "payment_intent.succeeded",
            {
                "id": "pi_proc_1",
                "object": "payment_intent",
                "amount": 800,
                "amount_received": 800,
                "currency": "gbp",
                "customer": customer,
                "status": "succeeded",
                "metadata": {"uid": uid, "chargectl_purpose": "offsession_topup"},
            },
        )
        hook = httpx.post(
            f"{url}/stripe/webhook",
            content=body,
            headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)},
            timeout=30,
        )
        assert hook.status_code == 200 and hook.json()["action"] == "credited"
        account = httpx.get(
            f"{url}/v1/account", headers={"Authorization": f"Bearer {mint.token(uid)}"}, timeout=30
        )
        assert account.json()["balances_minor"] == {"gbp": 800}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    output = (proc.stdout.read() if proc.stdout else b"") + (proc.stderr.read() if proc.stderr else b"")
    assert API_KEY.encode() not in output and WEBHOOK_SECRET.encode() not in output
    assert b"Traceback" not in output
    store = SqliteStore(store_path)
    try:
        assert Ledger(store).balance(uid, "gbp") == 800
    finally:
        store.close()


def test_app_serve_refuses_to_start_without_a_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARGECTL_CONFIG", raising=False)
    monkeypatch.delenv("CHARGECTL_APP__PROJECT_ID", raising=False)
    monkeypatch.setenv("CHARGECTL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    result = CliRunner().invoke(app, ["app", "serve", "--port", "0"])
    assert result.exit_code != 0 and "app.project_id" in str(result.exception)
    monkeypatch.setenv("CHARGECTL_APP__ALLOWED_ORIGINS", '["https://app.example.test/path"]')
    monkeypatch.setenv("CHARGECTL_APP__PROJECT_ID", PROJECT)
    result = CliRunner().invoke(app, ["app", "serve", "--port", "0"])
    assert result.exit_code != 0 and "app.allowed_origins" in str(result.exception)


def _unit_helpers() -> Any:
    """tests/cli/test_units.py: reading a unit's ExecStart and running it as systemd would."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "cli" / "test_units.py"
    spec = importlib.util.spec_from_file_location("unit_helpers_for_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_app_units_exec_start_line_runs_and_notifies(
    tmp_path: Path, stripe_server: backends.Server, certs_server: CertsServer
) -> None:
    units = _unit_helpers()
    config = tmp_path / "app.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[app]\nproject_id = "{PROJECT}"\ncerts_url = "{certs_server.url}"\n'
        f"port = {backends.free_port()}\n"
        f'[payments]\napi_base = "{stripe_server.url}"\n'
    )
    env = {**os.environ, "STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    env.pop("CHARGECTL_CONFIG", None)
    unit = (units.UNITS / "chargectl-app.service").read_text()
    err = units.run_until_ready(units.exec_start_argv(unit, config), env, tmp_path)
    units.assert_journal_lines(err)
    assert API_KEY not in err and WEBHOOK_SECRET not in err
