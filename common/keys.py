"""Ed25519 signing keys: generation, 0600 key files, key ids and a keyring of trusted public keys."""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chargectl.common.errors import ConfigError, SignatureError
from chargectl.common.files import write_atomic

__all__ = [
    "Keyring",
    "SigningKey",
    "TrustedKey",
    "key_id_for",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "save_public_key",
]


def key_id_for(public_key: bytes) -> str:
    """A short stable id for a raw 32-byte public key."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key; ``repr`` never shows the secret."""

    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("private key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_bytes)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def save_private_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` as PKCS#8 PEM, created with mode 0600 (never readable by others, even briefly)."""
    write_atomic(path, key.to_pem(), 0o600)


def load_private_key(path: Path) -> SigningKey:
    """Read a private key file; refuses files that group or others can read."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"key file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} is accessible by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    return SigningKey.from_pem(data)


def save_public_key(path: Path, public_key: bytes) -> None:
    """Write a raw public key as PEM (SubjectPublicKeyInfo), mode 0644."""
    pem = Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(path, pem, 0o644)


def load_public_key(path: Path) -> bytes:
    """Read a PEM public key file into raw 32 bytes."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"key file not found: {path}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class TrustedKey:
    """A public key we accept signatures from, for one site, within a validity window (ms; 0 = open)."""

    key_id: str
    public_key: bytes
    site_id: str
    not_before_ms: int = 0
    not_after_ms: int = 0


class Keyring:
    """Trusted public keys by key id; ``verify`` returns the site the signature belongs to."""

    def __init__(self, keys: list[TrustedKey] | None = None) -> None:
        self._keys: dict[str, tuple[TrustedKey, Ed25519PublicKey]] = {}
        for key in keys or []:
            self.add(key)

    def add(self, key: TrustedKey) -> None:
        if len(key.public_key) != 32:
            raise ConfigError(f"public key {key.key_id} is not 32 bytes")
        self._keys[key.key_id] = (key, Ed25519PublicKey.from_public_bytes(key.public_key))

    def add_public(
        self, public_key: bytes, site_id: str, not_before_ms: int = 0, not_after_ms: int = 0
    ) -> str:
        key_id = key_id_for(public_key)
        self.add(TrustedKey(key_id, public_key, site_id, not_before_ms, not_after_ms))
        return key_id

    def remove_site(self, site_id: str) -> None:
        for key_id in [k for k, (t, _) in self._keys.items() if t.site_id == site_id]:
            del self._keys[key_id]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, key_id: str, data: bytes, signature: bytes, now_ms: int | None = None) -> str:
        """Check ``signature`` over ``data``; raise ``SignatureError`` (with its ``reason``) if not acceptable."""
        entry = self._keys.get(key_id)
        if entry is None:
            raise SignatureError("unknown_key", f"unknown signing key {key_id!r}")
        trusted, public = entry
        if now_ms is not None:
            if trusted.not_before_ms and now_ms < trusted.not_before_ms:
                raise SignatureError("unknown_key", f"signing key {key_id} is not valid yet")
            if trusted.not_after_ms and now_ms > trusted.not_after_ms:
                raise SignatureError("unknown_key", f"signing key {key_id} expired")
        try:
            public.verify(signature, data)
        except InvalidSignature:
            raise SignatureError("bad_signature", f"bad signature for key {key_id}") from None
        return trusted.site_id
