"""Site operations as plans: provision, rotate keys, revoke, (re)write the bundle.

Each ``plan_*`` reads the backends and returns a :class:`~chargectl.provisioner.plan.Plan`; applying it
changes them. Key material is generated inside the step that stores it and read back from the
secrets port by later steps, so nothing depends on state held between steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from google.protobuf.descriptor import FieldDescriptor

from chargectl.common.codec import PublicKey, Site, Tariff
from chargectl.common.errors import ConfigError, NotFoundError, ProvisioningError
from chargectl.common.keys import SigningKey, key_id_for
from chargectl.common.topics import (
    DEAD_LETTER_TOPIC,
    TELEMETRY_TOPIC,
    command_subscription,
    command_topic,
    validate_shard,
    validate_site_id,
)
from chargectl.provisioner.bundle import (
    BundleFile,
    BundleTarget,
    bundle_is_current,
    render_bundle,
    write_bundle,
)
from chargectl.provisioner.plan import Plan, Step
from chargectl.services.adapters.pubsub_admin import BusAdmin
from chargectl.services.adapters.secrets import (
    Secrets,
    agent_key_secret,
    command_key_secret,
    enabled_versions,
)
from chargectl.services.adapters.store import Store

__all__ = ["Provisioner", "SiteSpec", "parse_tariff", "site_id_from_name"]

KeyKind = Literal["agent", "command"]
KINDS: tuple[KeyKind, ...] = ("agent", "command")


def site_id_from_name(name: str) -> str:
    """A site id from a human name: lower case, runs of other characters become one dash."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    try:
        return validate_site_id(slug)
    except ConfigError:
        raise ConfigError(
            f"cannot make a site id from name {name!r} (got {slug!r}); pass --site-id"
        ) from None


def parse_tariff(text: str, site_id: str, currency: str = "gbp") -> Tariff:
    """``key=value,…`` over the ``Tariff`` fields, e.g. ``price_per_kwh_minor=35,session_fee_minor=50``."""
    tariff = Tariff(tariff_id=f"{site_id}-default", currency=currency)
    fields = Tariff.DESCRIPTOR.fields_by_name
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        fd = fields.get(key)
        if not sep or fd is None:
            raise ConfigError(
                f"tariff: unknown or malformed item {part!r}; keys: {', '.join(sorted(fields))}"
            )
        if fd.type == FieldDescriptor.TYPE_STRING:
            setattr(tariff, key, value.lower() if key == "currency" else value)
            continue
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"tariff: {key} must be a whole number (minor units), got {value!r}") from None
        if number < 0:
            raise ConfigError(f"tariff: {key} must not be negative, got {number}")
        setattr(tariff, key, number)
    if not re.fullmatch(r"[a-z]{3}", tariff.currency):
        raise ConfigError(f"tariff: currency must be a 3-letter ISO code, got {tariff.currency!r}")
    return tariff


@dataclass(frozen=True)
class SiteSpec:
    """What ``provision site`` asks for; ``shard=None`` means 0 for a new site and "keep" otherwise."""

    site_id: str
    name: str
    tariff: Tariff
    shard: int | None = None

    def __post_init__(self) -> None:
        validate_site_id(self.site_id)
        if self.shard is not None:
            validate_shard(self.shard)


class Provisioner:
    """Plans site operations over the ports: store (``Site`` documents), secrets (private keys) and,
    with a cloud bus, the Pub/Sub admin (``bus=None`` for the embedded in-process bus)."""

    def __init__(
        self, store: Store, secrets: Secrets, bus: BusAdmin | None, project: str, backend: str
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.bus = bus
        self.project = project
        self.backend = backend

    # ----------------------------------------------------------------- reading

    def site(self, site_id: str) -> Site:
        site = self.store.get_site(validate_site_id(site_id))
        if site is None:
            raise NotFoundError(f"site {site_id!r} not found; `chargectl provision list` shows the sites")
        return site

    @staticmethod
    def _secret_name(site_id: str, kind: KeyKind) -> str:
        return agent_key_secret(site_id) if kind == "agent" else command_key_secret(site_id)

    def _retired_versions(self, site: Site, kind: KeyKind, now_ms: int) -> list[str]:
        """Enabled versions (except the newest) whose key the document no longer accepts at ``now_ms``."""
        name = self._secret_name(site.site_id, kind)
        keys = site.agent_keys if kind == "agent" else site.command_keys
        live = {
            key_id_for(bytes(k.public_key)) for k in keys if not (k.not_after_ms and k.not_after_ms < now_ms)
        }
        versions = enabled_versions(self.secrets, name)
        return [
            v for v in versions[:-1] if SigningKey.from_pem(self.secrets.access(name, v)).key_id not in live
        ]

    def _newest_key(self, site_id: str, kind: KeyKind) -> SigningKey | None:
        name = self._secret_name(site_id, kind)
        versions = enabled_versions(self.secrets, name)
        if not versions:
            return None
        return SigningKey.from_pem(self.secrets.access(name, versions[-1]))

    def agent_key(self, site_id: str) -> SigningKey:
        key = self._newest_key(site_id, "agent")
        if key is None:
            raise ProvisioningError(f"site {site_id} has no enabled agent key secret")
        return key

    # ----------------------------------------------------------------- steps

    def _topic_step(self, bus: BusAdmin, topic: str, why: str) -> Step:
        def create() -> None:
            bus.create_topic(topic)

        return Step("topic", topic, why, bus.topic_exists(topic), create)

    def _key_step(self, site_id: str, kind: KeyKind, rotating: Site | None = None) -> Step:
        name = self._secret_name(site_id, kind)
        what = "agent telemetry-signing key" if kind == "agent" else "hub command-signing key"

        def create() -> None:
            self.secrets.add_version(name, SigningKey.generate().to_pem())

        if rotating is not None:
            # A newest version that the document does not list yet was stored by a rotation that
            # stopped before updating the document: reuse it rather than stack another one.
            newest = self._newest_key(site_id, kind)
            listed = rotating.agent_keys if kind == "agent" else rotating.command_keys
            staged = newest is not None and all(k.key_id != newest.key_id for k in listed)
            return Step("secret", name, f"new version: {what}", staged, create)
        return Step("secret", name, what, bool(enabled_versions(self.secrets, name)), create)

    def _bundle_step(self, site_id: str, target: BundleTarget, now_ms: int, done: bool) -> Step:
        def write() -> None:
            write_bundle(target, self.render_bundle(site_id, now_ms))

        return Step(
            "bundle",
            str(target.path),
            "agent bundle (config, agent key, command keys, unit)",
            done,
            write,
        )

    def _bundle_current(self, site_id: str, target: BundleTarget, now_ms: int) -> bool:
        site = self.store.get_site(site_id)
        key = self._newest_key(site_id, "agent")
        if site is None or key is None:
            return False
        try:
            files = render_bundle(site, key, self.project, self.backend, now_ms)
        except ProvisioningError:
            return False
        return bundle_is_current(target, files)

    def render_bundle(self, site_id: str, now_ms: int) -> list[BundleFile]:
        """The bundle files of an active site, from its document and its newest agent key."""
        site = self.site(site_id)
        if site.status != Site.STATUS_ACTIVE:
            raise ProvisioningError(f"site {site_id} is revoked; it has no bundle")
        return render_bundle(site, self.agent_key(site_id), self.project, self.backend, now_ms)

    # ----------------------------------------------------------------- provision

    def plan_site(self, spec: SiteSpec, now_ms: int, bundle: BundleTarget | None = None) -> Plan:
        """Everything a site needs; existing pieces are marked done and left alone."""
        site_id = spec.site_id
        existing = self.store.get_site(site_id)
        if existing is not None:
            if existing.status == Site.STATUS_REVOKED:
                raise ProvisioningError(f"site {site_id} was revoked; provision a new site id instead")
            if spec.shard is not None and existing.shard != spec.shard:
                raise ProvisioningError(
                    f"site {site_id} already exists on shard {existing.shard}, not {spec.shard}"
                )
        steps: list[Step] = []
        if self.bus is not None:
            bus = self.bus
            steps.append(self._topic_step(bus, TELEMETRY_TOPIC, "telemetry topic (all sites → hubs)"))
            steps.append(self._topic_step(bus, DEAD_LETTER_TOPIC, "dead-letter topic"))
            topic = command_topic(site_id)
            steps.append(self._topic_step(bus, topic, "the site's command topic (hub → agent)"))
            sub = command_subscription(site_id)
            info = bus.get_subscription(sub)
            if info is not None and info.topic != topic:
                raise ProvisioningError(f"subscription {sub} exists on topic {info.topic}, not {topic}")

            def subscribe() -> None:
                bus.create_subscription(sub, topic)

            steps.append(
                Step("subscription", sub, f"the agent's subscription to {topic}", info is not None, subscribe)
            )
        steps.append(self._key_step(site_id, "agent"))
        steps.append(self._key_step(site_id, "command"))

        def put_site() -> None:
            self.store.put_site(self._new_site_doc(spec, now_ms))

        steps.append(
            Step(
                "site", site_id, "Site document (public keys, tariff, topics)", existing is not None, put_site
            )
        )
        if bundle is not None:
            steps.append(
                self._bundle_step(site_id, bundle, now_ms, self._bundle_current(site_id, bundle, now_ms))
            )
        return Plan("provision", site_id, tuple(steps))

    def _new_site_doc(self, spec: SiteSpec, now_ms: int) -> Site:
        agent = self._newest_key(spec.site_id, "agent")
        command = self._newest_key(spec.site_id, "command")
        if agent is None or command is None:
            raise ProvisioningError(f"site {spec.site_id}: key secrets missing; rerun to create them")
        site = Site(
            site_id=spec.site_id,
            name=spec.name,
            shard=spec.shard or 0,
            status=Site.STATUS_ACTIVE,
            tariff=spec.tariff,
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
        if self.bus is not None:
            site.command_topic = command_topic(spec.site_id)
            site.command_subscription = command_subscription(spec.site_id)
        site.agent_keys.append(
            PublicKey(key_id=agent.key_id, public_key=agent.public_bytes, not_before_ms=now_ms)
        )
        site.command_keys.append(
            PublicKey(key_id=command.key_id, public_key=command.public_bytes, not_before_ms=now_ms)
        )
        return site

    # ----------------------------------------------------------------- rotate

    def plan_rotate(
        self, site_id: str, now_ms: int, grace_ms: int, bundle: BundleTarget | None = None
    ) -> Plan:
        """New key pairs; the old public keys stay valid until ``now + grace``; a new bundle."""
        site = self.site(site_id)
        if site.status != Site.STATUS_ACTIVE:
            raise ProvisioningError(f"site {site_id} is revoked; its keys cannot be rotated")
        if grace_ms < 0:
            raise ConfigError(f"grace must be >= 0, got {grace_ms} ms")

        def update_site() -> None:
            current = self.site(site_id)
            agent = self._newest_key(site_id, "agent")
            command = self._newest_key(site_id, "command")
            if agent is None or command is None:
                raise ProvisioningError(f"site {site_id}: key secrets missing")
            for keys, new in ((current.agent_keys, agent), (current.command_keys, command)):
                if any(k.key_id == new.key_id for k in keys):
                    continue
                kept: list[PublicKey] = []
                for k in keys:
                    if k.not_after_ms and k.not_after_ms < now_ms:
                        continue  # expired already: no longer accepted anywhere
                    copy = PublicKey()
                    copy.CopyFrom(k)
                    if not copy.not_after_ms or copy.not_after_ms > now_ms + grace_ms:
                        copy.not_after_ms = now_ms + grace_ms
                    kept.append(copy)
                kept.append(PublicKey(key_id=new.key_id, public_key=new.public_bytes, not_before_ms=now_ms))
                del keys[:]
                keys.extend(kept)
            current.updated_at_ms = now_ms
            self.store.put_site(current)

        def retire() -> None:
            current = self.site(site_id)
            for kind in KINDS:
                for version in self._retired_versions(current, kind, now_ms):
                    self.secrets.disable(self._secret_name(site_id, kind), version)

        retired = [v for kind in KINDS for v in self._retired_versions(site, kind, now_ms)]
        steps = [
            self._key_step(site_id, "agent", rotating=site),
            self._key_step(site_id, "command", rotating=site),
            Step(
                "site",
                site_id,
                f"old keys expire in {grace_ms // 1000} s; new keys added",
                False,
                update_site,
            ),
            Step(
                "secret", f"{site_id} key versions", "disable versions of expired keys", not retired, retire
            ),
        ]
        if bundle is not None:
            steps.append(self._bundle_step(site_id, bundle, now_ms, False))
        return Plan("rotate-keys", site_id, tuple(steps))

    # ----------------------------------------------------------------- revoke

    def plan_revoke(self, site_id: str, now_ms: int) -> Plan:
        """Mark the site REVOKED (hubs stop trusting it), drop its command subscription, disable its keys."""
        site = self.site(site_id)

        def mark() -> None:
            current = self.site(site_id)
            current.status = Site.STATUS_REVOKED
            current.updated_at_ms = now_ms
            self.store.put_site(current)

        steps = [Step("site", site_id, "status REVOKED", site.status == Site.STATUS_REVOKED, mark)]
        if self.bus is not None:
            bus = self.bus
            sub = command_subscription(site_id)

            def unsubscribe() -> None:
                bus.delete_subscription(sub)

            gone = bus.get_subscription(sub) is None
            steps.append(
                Step("subscription", sub, "delete the agent's command subscription", gone, unsubscribe)
            )
        for name in (agent_key_secret(site_id), command_key_secret(site_id)):
            steps.append(self._disable_step(name))
        return Plan("revoke", site_id, tuple(steps))

    def _disable_step(self, name: str) -> Step:
        def disable() -> None:
            self.secrets.disable_all(name)

        return Step(
            "secret", name, "disable every version", not enabled_versions(self.secrets, name), disable
        )

    # ----------------------------------------------------------------- bundle

    def plan_bundle(self, site_id: str, now_ms: int, target: BundleTarget) -> Plan:
        """Rewrite the bundle of an existing site (e.g. a replacement Pi)."""
        self.site(site_id)
        current = self._bundle_current(site_id, target, now_ms)
        return Plan("bundle", site_id, (self._bundle_step(site_id, target, now_ms, current),))
