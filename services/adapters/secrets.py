"""The secrets port: named, versioned secrets (the sites' private signing keys).

Embedded: :class:`KeyFileSecrets`, 0600 files under ``<config_dir>/sites/<site_id>/``. Cloud:
:class:`SecretManagerSecrets`, Google Secret Manager (one secret per name, one version per key).
Names follow ``chargectl-<site_id>-agent-key`` / ``chargectl-<site_id>-command-key`` (PEM PKCS#8).

A rotation adds a version; a revocation disables every version. Callers access versions by id (from
:meth:`Secrets.versions`), never ``latest``, whose meaning differs between servers.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from chargectl.common.errors import ConfigError, NotFoundError, ProvisioningError, TransportError
from chargectl.common.files import write_atomic
from chargectl.common.topics import validate_site_id

if TYPE_CHECKING:
    from chargectl.common.config import Config

__all__ = [
    "KeyFileSecrets",
    "SecretManagerSecrets",
    "SecretVersion",
    "Secrets",
    "SecretsSettings",
    "agent_key_secret",
    "command_key_secret",
    "enabled_versions",
    "secrets_from_config",
]

KeyKind = Literal["agent", "command"]
_NAME_RE = re.compile(r"^chargectl-(?P<site>[a-z][a-z0-9-]{1,48}[a-z0-9])-(?P<kind>agent|command)-key\Z")


def agent_key_secret(site_id: str) -> str:
    """The secret holding the site agent's telemetry-signing private key."""
    return f"chargectl-{validate_site_id(site_id)}-agent-key"


def command_key_secret(site_id: str) -> str:
    """The secret holding the hub's command-signing private key for the site."""
    return f"chargectl-{validate_site_id(site_id)}-command-key"


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret: its id (``"1"``, ``"2"``…, increasing) and whether it can be read."""

    version: str
    enabled: bool


class Secrets(Protocol):
    def versions(self, name: str) -> list[SecretVersion]:
        """Every version of ``name``, oldest first; ``[]`` if the secret does not exist."""
        ...

    def add_version(self, name: str, data: bytes) -> str:
        """Store ``data`` as a new version (creating the secret if missing); return its version id."""
        ...

    def access(self, name: str, version: str) -> bytes:
        """The data of an enabled version; ``NotFoundError`` if missing or disabled."""
        ...

    def disable(self, name: str, version: str) -> bool:
        """Disable one version; False if it was not enabled (or does not exist)."""
        ...

    def disable_all(self, name: str) -> int:
        """Disable every enabled version of ``name``; return how many were enabled."""
        ...


def enabled_versions(secrets: Secrets, name: str) -> list[str]:
    """Ids of the enabled versions of ``name``, oldest first."""
    return [v.version for v in secrets.versions(name) if v.enabled]


# --------------------------------------------------------------------------- key files


class KeyFileSecrets:
    """Secrets as key files: ``<root>/sites/<site_id>/<kind>.key`` is the newest enabled version.

    Every version ``n`` is also kept as ``<kind>.key.v<n>`` (0600) so the hub can still sign with the
    previous command key during a rotation's grace period; disabling renames a version to
    ``….v<n>.disabled`` and removes ``<kind>.key``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _site_dir(self, name: str) -> tuple[Path, str]:
        m = _NAME_RE.match(name)
        if m is None:
            raise ConfigError(
                f"secret name {name!r} is not chargectl-<site>-agent-key or chargectl-<site>-command-key"
            )
        return self.root / "sites" / m["site"], m["kind"]

    def path_for(self, name: str) -> Path:
        """The key file holding the newest enabled version of ``name``."""
        directory, kind = self._site_dir(name)
        return directory / f"{kind}.key"

    def versions(self, name: str) -> list[SecretVersion]:
        directory, kind = self._site_dir(name)
        if not directory.is_dir():
            return []
        found: dict[int, bool] = {}
        pattern = re.compile(rf"^{kind}\.key\.v(\d+)(\.disabled)?\Z")
        for entry in directory.iterdir():
            m = pattern.match(entry.name)
            if m:
                found[int(m[1])] = m[2] is None
        return [SecretVersion(str(n), found[n]) for n in sorted(found)]

    def add_version(self, name: str, data: bytes) -> str:
        directory, kind = self._site_dir(name)
        numbers = [int(v.version) for v in self.versions(name)]
        version = str(max(numbers, default=0) + 1)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            _write_0600(directory / f"{kind}.key.v{version}", data)
            _write_0600(directory / f"{kind}.key", data)
        except OSError as exc:
            raise ProvisioningError(f"cannot write key file under {directory}: {exc.strerror}") from exc
        return version

    def access(self, name: str, version: str) -> bytes:
        directory, kind = self._site_dir(name)
        path = directory / f"{kind}.key.v{version}"
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"secret {name} version {version} not found (or disabled)") from None
        except OSError as exc:
            raise ProvisioningError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"key file {path} is accessible by others (mode {stat.S_IMODE(mode):o})")
        return data

    def disable(self, name: str, version: str) -> bool:
        directory, kind = self._site_dir(name)
        path = directory / f"{kind}.key.v{version}"
        try:
            path.rename(path.with_name(path.name + ".disabled"))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ProvisioningError(f"cannot disable key file {path}: {exc.strerror}") from exc
        self._refresh_current(name)
        return True

    def disable_all(self, name: str) -> int:
        return sum(self.disable(name, v.version) for v in self.versions(name) if v.enabled)

    def _refresh_current(self, name: str) -> None:
        """``<kind>.key`` is the newest enabled version, or absent when none is enabled."""
        current = self.path_for(name)
        enabled = enabled_versions(self, name)
        if enabled:
            _write_0600(current, self.access(name, enabled[-1]))
        else:
            with contextlib.suppress(FileNotFoundError):
                current.unlink()


def _write_0600(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o600)


# --------------------------------------------------------------------------- Secret Manager


@dataclass(frozen=True)
class SecretsSettings:
    """``[secrets]``: where Secret Manager is (empty endpoint = Google's) and which transport to use."""

    endpoint: str = ""
    transport: Literal["grpc", "rest"] = "grpc"

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {self.endpoint!r}")


class SecretManagerSecrets:
    """Secrets in Google Secret Manager; the SDK is imported on first use.

    An ``http://`` endpoint (a local test server) is used with anonymous credentials over REST.
    """

    def __init__(self, project: str, settings: SecretsSettings | None = None, client: Any = None) -> None:
        self.project = project
        self.settings = settings or SecretsSettings()
        self._client = client

    def _c(self) -> Any:
        if self._client is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import secretmanager

            kwargs: dict[str, Any] = {}
            endpoint = self.settings.endpoint
            transport = self.settings.transport
            if endpoint:
                kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
            if endpoint.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials

                kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
                transport = "rest"  # plain-HTTP servers speak HTTP/1 only
            self._client = secretmanager.SecretManagerServiceClient(transport=transport, **kwargs)
        return self._client

    def _secret_path(self, name: str) -> str:
        return f"projects/{self.project}/secrets/{name}"

    def versions(self, name: str) -> list[SecretVersion]:
        from google.api_core import exceptions as gexc
        from google.cloud import secretmanager

        enabled = secretmanager.SecretVersion.State.ENABLED
        try:
            found = [
                SecretVersion(v.name.rsplit("/", 1)[-1], v.state == enabled)
                for v in self._c().list_secret_versions(request={"parent": self._secret_path(name)})
            ]
        except gexc.NotFound:
            return []
        except gexc.GoogleAPIError as exc:
            raise TransportError(f"Secret Manager: listing versions of {name} failed: {exc}") from exc
        return sorted(found, key=lambda v: int(v.version) if v.version.isdigit() else 0)

    def add_version(self, name: str, data: bytes) -> str:
        from google.api_core import exceptions as gexc

        client = self._c()
        try:
            with contextlib.suppress(gexc.AlreadyExists, gexc.Conflict):
                client.create_secret(
                    request={
                        "parent": f"projects/{self.project}",
                        "secret_id": name,
                        "secret": {"replication": {"automatic": {}}, "labels": {"app": "chargectl"}},
                    }
                )
            version = client.add_secret_version(
                request={"parent": self._secret_path(name), "payload": {"data": data}}
            )
        except gexc.GoogleAPIError as exc:
            raise TransportError(f"Secret Manager: storing {name} failed: {exc}") from exc
        return str(version.name.rsplit("/", 1)[-1])

    def access(self, name: str, version: str) -> bytes:
        from google.api_core import exceptions as gexc

        path = f"{self._secret_path(name)}/versions/{version}"
        try:
            response = self._c().access_secret_version(request={"name": path})
        except gexc.NotFound:
            raise NotFoundError(f"secret {name} version {version} not found") from None
        except gexc.FailedPrecondition:
            raise NotFoundError(f"secret {name} version {version} is disabled") from None
        except gexc.BadRequest as exc:
            # local servers answer a disabled version with 400
            raise NotFoundError(
                f"secret {name} version {version} cannot be accessed: {exc.message}"
            ) from None
        except gexc.GoogleAPIError as exc:
            raise TransportError(f"Secret Manager: reading {name} failed: {exc}") from exc
        return bytes(response.payload.data)

    def disable(self, name: str, version: str) -> bool:
        from google.api_core import exceptions as gexc

        if not any(v.version == version and v.enabled for v in self.versions(name)):
            return False
        try:
            self._c().disable_secret_version(
                request={"name": f"{self._secret_path(name)}/versions/{version}"}
            )
        except gexc.NotFound:
            return False
        except gexc.GoogleAPIError as exc:
            raise TransportError(f"Secret Manager: disabling {name} version {version} failed: {exc}") from exc
        return True

    def disable_all(self, name: str) -> int:
        return sum(self.disable(name, v.version) for v in self.versions(name) if v.enabled)


def secrets_from_config(config: Config) -> Secrets:
    """Key files under ``config_dir`` for ``backend = "local"``; Secret Manager for ``"gcp"``."""
    if config.backend == "gcp":
        return SecretManagerSecrets(config.project, config.section("secrets", SecretsSettings))
    return KeyFileSecrets(config.config_dir)
