"""Provision the one site of ``chargectl run`` (and the demo) on first start: what
:class:`~chargectl.services.allinone.AllInOne` is given as its ``provision`` port, so the services never
import the provisioner."""

from __future__ import annotations

import logging

from chargectl.common.config import Config
from chargectl.provisioner.plan import apply
from chargectl.provisioner.site import SiteSpec, parse_tariff
from chargectl.provisioner.wiring import open_provisioner
from chargectl.services.allinone import LocalSite, RunSettings
from chargectl.services.hub.settings import HubSettings

__all__ = ["provision_local_site"]

log = logging.getLogger("chargectl.run")


def provision_local_site(config: Config, run: RunSettings, hub: HubSettings, now_ms: int) -> LocalSite:
    """Create the site (keys, document) if this is the first start (a no-op afterwards); its keys."""
    prov = open_provisioner(config)
    tariff = parse_tariff(run.tariff, run.site_id, hub.tariff.currency)
    if not run.tariff:
        t = hub.tariff
        tariff.price_per_kwh_minor = int(t.price_per_kwh_minor)
        tariff.session_fee_minor = t.session_fee_minor
        tariff.idle_price_per_minute_minor = int(t.idle_price_per_minute_minor)
        tariff.idle_grace_s = t.idle_grace_s
        tariff.min_start_balance_minor = t.min_start_balance_minor
    spec = SiteSpec(run.site_id, run.site_name, tariff)
    done = apply(prov.plan_site(spec, now_ms))
    if done:
        log.info("provisioned site %s (%d steps)", run.site_id, len(done))
    return LocalSite(prov.site(run.site_id), prov.secrets, prov.agent_key(run.site_id))
