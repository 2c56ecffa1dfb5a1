"""Shared test helpers: the cloud backend set for one project, and a telemetry message signed from a
bundle as a site's agent would sign it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import backends

from chargectl.common.codec import Batch, pack_telemetry
from chargectl.common.keys import load_private_key
from chargectl.common.readings import Reading
from chargectl.provisioner.site import Provisioner
from chargectl.services.adapters.firestore_store import FirestoreStore
from chargectl.services.adapters.pubsub_admin import PubSubAdmin
from chargectl.services.adapters.secrets import SecretManagerSecrets, SecretsSettings

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def telemetry_from_bundle(bundle: Path, seq: int = 1, ts_ms: int = T0_MS) -> bytes:
    """A telemetry message signed with the bundle's agent key, for the site its config names."""
    config = tomllib.loads((bundle / "agent.toml").read_text())
    key = load_private_key(bundle / config["agent"]["agent_key_file"])
    reading = Reading(mac="A8032AB12345", ts_ms=ts_ms, power_w=1234.5, energy_mwh=987_654, relay_on=True)
    batch = Batch(site_id=config["agent"]["site_id"], batch_seq=seq, readings=(reading,))
    data, attrs = pack_telemetry(batch, key)
    assert attrs["site_id"] == config["agent"]["site_id"]
    return data


class Cloud:
    def __init__(self, project: str, drongo: backends.Server) -> None:
        self.project = project
        self.bus = PubSubAdmin(project)
        self.secrets = SecretManagerSecrets(project, SecretsSettings(endpoint=drongo.url))
        self.store = FirestoreStore(project)
        self.prov = Provisioner(self.store, self.secrets, self.bus, project, "gcp")
        self.drongo = drongo

    def secret_names(self) -> list[str]:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import secretmanager

        client = secretmanager.SecretManagerServiceClient(
            transport="rest",
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.drongo.url),
        )
        return sorted(
            s.name.rsplit("/", 1)[-1] for s in client.list_secrets(parent=f"projects/{self.project}")
        )

    def close(self) -> None:
        self.bus.close()
        self.store.close()
