"""Key files are 0600, refused when readable by others, and never show the secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chargectl.common.errors import CodecError, ConfigError
from chargectl.common.keys import (
    Keyring,
    SigningKey,
    key_id_for,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
)


def test_private_key_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "sub" / "agent.key"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).public_bytes == key.public_bytes
    assert "PRIVATE" not in repr(key) and key.to_pem().decode() not in repr(key)


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    save_private_key(path, SigningKey.generate())
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(path)


def test_public_key_file_and_ids(tmp_path: Path) -> None:
    key = SigningKey.generate()
    save_public_key(tmp_path / "k.pub", key.public_bytes)
    assert load_public_key(tmp_path / "k.pub") == key.public_bytes
    assert key.key_id == key_id_for(key.public_bytes) and key.key_id.startswith("ed25519:")
    with pytest.raises(ConfigError):
        load_public_key(tmp_path / "missing.pub")


def test_keyring_windows_and_removal() -> None:
    key = SigningKey.generate()
    ring = Keyring()
    kid = ring.add_public(key.public_bytes, "site-a", not_before_ms=100, not_after_ms=200)
    sig = key.sign(b"m")
    assert ring.verify(kid, b"m", sig, now_ms=150) == "site-a"
    with pytest.raises(CodecError, match="not valid yet"):
        ring.verify(kid, b"m", sig, now_ms=50)
    with pytest.raises(CodecError, match="bad signature"):
        ring.verify(kid, b"other", sig)
    ring.remove_site("site-a")
    assert kid not in ring and len(ring) == 0
