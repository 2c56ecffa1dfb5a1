"""The agent bundle: exactly what a site's Pi needs, as a directory or a deterministic tarball.

``agent.toml`` (the agent's config), ``agent.key`` (its telemetry-signing key, 0600), one
``command*.pub`` per command key the agent must accept (two during a rotation's grace period) and
``chargectl-agent.service``. Never a hub private key. Rendering is pure; writing is idempotent (same
inputs, same bytes), so an unchanged bundle is recognised and left alone.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chargectl.common.codec import PublicKey, Site
from chargectl.common.errors import ProvisioningError
from chargectl.common.keys import SigningKey, key_id_for
from chargectl.provisioner.trust import valid_keys

__all__ = [
    "AGENT_CONFIG_DIR",
    "AGENT_STATE_DIR",
    "BundleFile",
    "BundleTarget",
    "bundle_is_current",
    "render_bundle",
    "unit_template",
    "write_bundle",
]

AGENT_CONFIG_DIR = "/etc/chargectl"
AGENT_STATE_DIR = "/var/lib/chargectl"
UNIT_NAME = "chargectl-agent.service"


@dataclass(frozen=True)
class BundleFile:
    name: str
    data: bytes = field(repr=False)
    mode: int


@dataclass(frozen=True)
class BundleTarget:
    """Where to write: a directory, or a ``.tar.gz`` file when ``tarball``."""

    path: Path
    tarball: bool = False


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _public_pem(public: bytes) -> bytes:
    return Ed25519PublicKey.from_public_bytes(public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unit_template(name: str) -> str:
    """The systemd unit template ``name`` shipped in the package (``provisioner/units``)."""
    try:
        return (resources.files("chargectl.provisioner") / "units" / name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisioningError(f"the unit template {name} is missing from this install: {exc}") from exc


def _unit_text() -> bytes:
    """The agent's unit, from the same template the install scripts and README describe."""
    text = unit_template(UNIT_NAME)
    expected = f"ExecStart=/opt/chargectl/bin/chargectl agent --config {AGENT_CONFIG_DIR}/agent.toml"
    if expected not in text.splitlines():
        raise ProvisioningError(
            f"the unit template {UNIT_NAME} does not start the agent with {AGENT_CONFIG_DIR}"
        )
    return text.encode()


def _command_key_files(keys: list[PublicKey]) -> list[tuple[str, bytes]]:
    """``command.pub`` for the newest key, ``command-<id>.pub`` for each older one still valid."""
    out: list[tuple[str, bytes]] = []
    for i, key in enumerate(keys):
        public = bytes(key.public_key)
        newest = i == len(keys) - 1
        name = "command.pub" if newest else f"command-{key_id_for(public).split(':', 1)[1]}.pub"
        out.append((name, _public_pem(public)))
    return out


def render_bundle(
    site: Site, agent_key: SigningKey, project: str, backend: str, now_ms: int
) -> list[BundleFile]:
    """The bundle's files for ``site`` at ``now_ms``, signed-for by ``agent_key``."""
    commands = _command_key_files(valid_keys(site.command_keys, now_ms))
    if not commands:
        raise ProvisioningError(f"site {site.site_id} has no valid command key; run rotate-keys")
    if not any(key_id_for(bytes(k.public_key)) == agent_key.key_id for k in site.agent_keys):
        raise ProvisioningError(f"the agent key of site {site.site_id} is not in its Site document")
    files_list = ", ".join(_toml_str(name) for name, _ in commands)
    config = (
        f"backend = {_toml_str(backend)}\n"
        f"project = {_toml_str(project)}\n"
        f"state_dir = {_toml_str(AGENT_STATE_DIR)}\n"
        "\n"
        "[agent]\n"
        f"site_id = {_toml_str(site.site_id)}\n"
        f"shard = {site.shard}\n"
        'agent_key_file = "agent.key"\n'
        f"command_public_key_files = [{files_list}]\n"
        "poll_interval_s = 5.0\n"
        "flush_interval_s = 30.0\n"
        "discovery = true\n"
    )
    files = [
        BundleFile("agent.toml", config.encode(), 0o644),
        BundleFile("agent.key", agent_key.to_pem(), 0o600),
        *(BundleFile(name, pem, 0o644) for name, pem in commands),
        BundleFile(UNIT_NAME, _unit_text(), 0o644),
    ]
    return files


def _tar_bytes(files: list[BundleFile]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.name)
            info.size = len(f.data)
            info.mode = f.mode
            info.mtime = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(f.data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def bundle_is_current(target: BundleTarget, files: list[BundleFile]) -> bool:
    """True if ``target`` already holds exactly ``files`` (same bytes and modes, nothing else)."""
    try:
        if target.tarball:
            return target.path.read_bytes() == _tar_bytes(files)
        if not target.path.is_dir():
            return False
        present = {p.name for p in target.path.iterdir()}
        if present != {f.name for f in files}:
            return False
        for f in files:
            p = target.path / f.name
            if (p.stat().st_mode & 0o777) != f.mode or p.read_bytes() != f.data:
                return False
    except OSError:
        return False
    return True


def _bundle_name(name: str) -> bool:
    """A file a bundle directory may hold: one of ours, or the temporary file of an interrupted write."""
    name = name[1:-4] if name.startswith(".") and name.endswith(".tmp") else name
    return name in ("agent.toml", "agent.key", UNIT_NAME) or (
        name.startswith("command") and name.endswith(".pub")
    )


def check_target(target: BundleTarget) -> None:
    """Refuse, before anything is provisioned, a bundle path that cannot or must not be written.

    A directory bundle goes to a new directory or over an earlier bundle only: writing it into one
    that holds anything else (``--out /tmp``, ``--out ~``) would make that directory 0700 and mix the
    agent's private key into it. A tarball does not replace a directory. The nearest existing parent
    must be a directory we can write to."""
    path = target.path
    try:
        if target.tarball:
            if path.is_dir():
                raise ProvisioningError(f"cannot write bundle {path}: it is a directory")
        elif path.exists() or path.is_symlink():
            if path.is_symlink() or not path.is_dir():
                raise ProvisioningError(
                    f"cannot write bundle {path}: it exists and is not a bundle directory"
                )
            others = sorted(p.name for p in path.iterdir() if not _bundle_name(p.name))
            if others:
                raise ProvisioningError(
                    f"cannot write bundle {path}: the directory holds other files ({', '.join(others[:3])});"
                    " give --out a new directory"
                )
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ProvisioningError(f"cannot write bundle {path}: {parent} is not a writable directory")
    except OSError as exc:
        raise ProvisioningError(f"cannot write bundle {path}: {exc.strerror}") from exc


def write_bundle(target: BundleTarget, files: list[BundleFile]) -> None:
    """Write the bundle; a directory is made 0700 and stale ``command*.pub`` files are removed."""
    check_target(target)
    try:
        if target.tarball:
            target.path.parent.mkdir(parents=True, exist_ok=True)
            _write(target.path, _tar_bytes(files), 0o600)
            return
        target.path.mkdir(parents=True, exist_ok=True)
        os.chmod(target.path, 0o700)
        names = {f.name for f in files}
        for old in target.path.glob("command*.pub"):
            if old.name not in names:
                old.unlink()
        for f in files:
            _write(target.path / f.name, f.data, f.mode)
    except OSError as exc:
        raise ProvisioningError(f"cannot write bundle {target.path}: {exc.strerror}") from exc
