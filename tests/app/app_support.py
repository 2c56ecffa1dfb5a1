"""App-boundary test support: the Firestore emulator enforcing firestore.rules (stopped by process group),
Firebase ID tokens minted for tests and a certificates server; fixtures registered by conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import backends
import pytest
from server_support import running

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "firestore.rules"


@pytest.fixture(scope="session")
def firestore_rules_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """A Firestore emulator that evaluates the repository's firestore.rules for client requests."""
    yield from running("firestore", tmp_path_factory, rules=RULES)


# ----------------------------------------------------------------------------- tokens and the app server

import base64  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from typing import Any  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from stripe_support import API_KEY, WEBHOOK_SECRET, register_webhook  # noqa: E402,F401  (re-exported)

PROJECT = "chargectl-app-test"
KID = "test-key-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def self_signed(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TokenMint:
    """Mints Firebase-shaped ID tokens with a throwaway RSA key whose certificate ``CertsServer`` publishes."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert_pem = self_signed(self.key)

    def claims(self, uid: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": f"https://securetoken.google.com/{PROJECT}",
            "aud": PROJECT,
            "auth_time": now - 10,
            "user_id": uid,
            "sub": uid,
            "iat": now - 10,
            "exp": now + 3600,
            "email": f"{uid}@example.test",
            "email_verified": True,
            "name": "Ada Lovelace",
            "firebase": {"sign_in_provider": "google.com"},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not ...}

    def token(
        self,
        uid: str,
        header: dict[str, Any] | None = None,
        key: rsa.RSAPrivateKey | None = None,
        **overrides: Any,
    ) -> str:
        head = header if header is not None else {"alg": "RS256", "kid": KID, "typ": "JWT"}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(self.claims(uid, **overrides)).encode())}"
        signature = (key or self.key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


class CertsServer:
    """Publishes ``{kid: PEM}`` like Google's securetoken endpoint, with Cache-Control max-age."""

    def __init__(self, certs: dict[str, str], max_age_s: int = 3600) -> None:
        self.certs = certs
        self.max_age_s = max_age_s
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.certs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header(
                    "Cache-Control", f"public, max-age={outer.max_age_s}, must-revalidate, no-transform"
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"

    def __enter__(self) -> CertsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="session")
def mint() -> TokenMint:
    return TokenMint()


@pytest.fixture
def certs_server(mint: TokenMint) -> Iterator[CertsServer]:
    with CertsServer({KID: mint.cert_pem}) as server:
        yield server
