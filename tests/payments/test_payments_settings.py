"""The [payments] table and the package's import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chargectl.common.config import load_config
from chargectl.common.errors import ConfigError
from chargectl.services.payments.settings import PaymentsSettings


def test_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[payments]\ncurrency = "EUR"\nmin_topup_minor = 1000\n')
    cfg = load_config(path, {"CHARGECTL_PAYMENTS__WEBHOOK_PORT": "9000"})
    settings = cfg.section("payments", PaymentsSettings)
    assert (settings.currency, settings.min_topup_minor, settings.webhook_port) == ("eur", 1000, 9000)
    assert settings.store_path is None  # the shared store
    explicit = load_config(None, {"CHARGECTL_PAYMENTS__STORE_PATH": "/data/pay.db"}).section(
        "payments", PaymentsSettings
    )
    assert explicit.store_path == Path("/data/pay.db")
    assert settings.success_url.startswith("http://localhost:8080/topup/success?session_id=")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHARGECTL_PAYMENTS__CURRENCY": "xyz"}, "payments.currency"),
        ({"CHARGECTL_PAYMENTS__WEBHOOK_PORT": "70000"}, "payments.webhook_port"),
        ({"CHARGECTL_PAYMENTS__APP_URL": "ftp://x"}, "payments.app_url"),
        ({"CHARGECTL_PAYMENTS__SECRET_KEY": "sk_live_x"}, "secret_key"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, env).section("payments", PaymentsSettings)


def test_the_ledger_side_of_the_package_loads_no_sdk() -> None:
    code = (
        "import sys, chargectl.services.payments as p; p.Ledger; p.parse_amount; "
        "assert 'stripe' not in sys.modules, 'stripe loaded'; p.StripeOps; assert 'stripe' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
