"""App-boundary fixtures (defined in app_support.py, which test modules import by its own name)."""

import sys
from pathlib import Path

# The app tests use payments_helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "payments"))

from app_support import certs_server, firestore_rules_emulator, mint  # noqa: F401
