"""ShellyClient against simulated plugs over real loopback HTTP: reading, switching, auth, faults."""

from __future__ import annotations

import pytest
from shelly_support import FleetFactory

from chargectl.common.clock import ManualClock
from chargectl.common.errors import (
    DeviceAuthError,
    DeviceBusyError,
    DeviceError,
    DeviceMismatchError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    InvalidResponse,
    RpcCallError,
)
from chargectl.common.readings import DeviceFlag
from chargectl.shelly import ShellyClient
from chargectl.shelly.auth import parse_auth_header
from chargectl.shelly.sim import SimPlug
from chargectl.shelly.simdevice import make_profile

pytestmark = pytest.mark.integration

MACS = {1: "A1B2C3000001", 2: "A1B2C3000002", 3: "A1B2C3000003", 4: "A1B2C3000004"}


async def one(fleet_factory: FleetFactory, gen: int, **kw: object) -> SimPlug:
    fleet = await fleet_factory([make_profile(gen, MACS[gen], **kw)])
    return fleet.plugs[0]


async def client_for(plug: SimPlug, clock: ManualClock, **kw: object) -> ShellyClient:
    return await ShellyClient.connect(plug.host, plug.port, clock=clock, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("gen", [1, 2, 3, 4])
async def test_detects_generation_and_reads_the_truth(
    gen: int, fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, gen)
    async with await client_for(plug, manual_clock) as client:
        assert (client.gen, client.mac, client.switchable, client.auth) == (gen, MACS[gen], True, False)
        plug.device.set_load(watts=1500)
        assert await client.set_relay(True) is True
        manual_clock.advance(600)
        r = await client.read()
        truth = plug.truth()
        assert r.relay_on and truth.relay_on
        assert r.power_w == 1500.0
        # 1500 W for 10 min = 250 Wh, in the plug's own unit (Gen1: 15000 Wmin) → 250000 mWh
        assert r.energy_mwh == truth.energy_mwh == 250_000
        assert r.ts_ms == int(manual_clock.now() * 1000)
        assert r.uptime_s == 600


@pytest.mark.parametrize("gen", [1, 3])
async def test_set_relay_arms_flip_back_timer(
    gen: int, fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, gen)
    async with await client_for(plug, manual_clock) as client:
        await client.set_relay(True, auto_off_s=60)
        state = await client.relay_state()
        assert state.on and state.timer_remaining_s == 60
        assert plug.truth().timer_remaining_s == 60
        manual_clock.advance(60)
        assert (await client.read()).relay_on is False
        assert await client.set_relay(False) is False


async def test_switching_checks_the_mac_first(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    fleet = await fleet_factory([make_profile(2, MACS[2]), make_profile(3, MACS[3])])
    a, b = fleet.plugs
    async with await client_for(a, manual_clock) as client:
        client.move(b.host, b.port)  # the address now hosts another plug
        with pytest.raises(DeviceMismatchError, match=MACS[3]):
            await client.set_relay(True)
    assert not b.truth().relay_on
    with pytest.raises(DeviceMismatchError):
        await ShellyClient.connect(b.host, b.port, mac=MACS[2].lower())


async def test_over_power_trip_is_reported(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 2)
    plug.device.set_load(watts=5000)
    async with await client_for(plug, manual_clock) as client:
        with pytest.raises(DeviceError, match="over-power"):
            await client.set_relay(True)
        assert (await client.read()).errors & DeviceFlag.OVERPOWER


async def test_metering_only_plug(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 3, model="S3PL-30116EU", metering_only=True)
    plug.device.set_load(watts=100)
    async with await client_for(plug, manual_clock) as client:
        assert client.switchable is False
        with pytest.raises(DeviceError, match="metering-only"):
            await client.set_relay(True)
        manual_clock.advance(36)
        r = await client.read()
        assert (r.power_w, r.energy_mwh, r.relay_on) == (100.0, 1000, True)


async def test_gen1_reboot_mid_charge_resets_counter(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, 1, initial_on=True)
    plug.device.set_load(profile="ev")
    async with await client_for(plug, manual_clock) as client:
        await client.set_relay(True)
        manual_clock.advance(1800)
        before = await client.read()
        assert before.energy_mwh == 1_150_000  # 2300 W for 30 min
        plug.device.reboot()
        manual_clock.advance(60)
        after = await client.read()
        assert after.uptime_s == 60 < before.uptime_s  # type: ignore[operator]
        # initial_on: the relay comes back on and counts from zero: 2300 W for 1 min = 38333 mWh
        assert after.energy_mwh == 38333 < before.energy_mwh


async def test_gen2_counter_survives_reboot(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 2)
    plug.device.set_load(watts=1200)
    async with await client_for(plug, manual_clock) as client:
        await client.set_relay(True)
        manual_clock.advance(3600)
        await client.rpc("Shelly.Reboot")
        r = await client.read()
        assert (r.energy_mwh, r.uptime_s, r.relay_on) == (1_200_000, 0, False)


async def test_rpc_errors_are_read_from_non_2xx_bodies(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, 2)
    async with await client_for(plug, manual_clock) as client:
        with pytest.raises(RpcCallError) as bad_id:
            await client.rpc("Switch.GetStatus", {"id": 3})
        assert (bad_id.value.code, bad_id.value.rpc_message) == (-105, "Argument 'id', value 3 not found!")
        with pytest.raises(RpcCallError) as unknown:
            await client.rpc("Shelly.GetComponents")
        assert unknown.value.code == 404
    frame = await ShellyClient.connect(plug.host, plug.port, rpc_mode="frame")
    async with frame:
        with pytest.raises(RpcCallError) as missing:
            await frame.rpc("Switch.GetStatus")
        assert missing.value.code == -103
        assert (await frame.rpc("Switch.GetStatus", {"id": 0}))["output"] is False


# --- auth ---------------------------------------------------------------------------------------------


async def test_digest_header_form_reuses_nonce_with_increasing_nc(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, 3, password="s3cret")
    async with await client_for(plug, manual_clock, password="s3cret") as client:
        for _ in range(3):
            await client.read()
    authed = [e for e in plug.log if e.authorization]
    unauth = [e for e in plug.log if not e.authorization and e.path.startswith("/rpc")]
    assert len(unauth) == 1 and unauth[0].status == 401  # one challenge, then pre-emptive auth
    params = [parse_auth_header(e.authorization)[1] for e in authed]  # type: ignore[arg-type]
    assert [p["nc"] for p in params] == ["00000001", "00000002", "00000003", "00000004"]
    assert len({p["nonce"] for p in params}) == 1
    assert all(e.status == 200 for e in authed)


async def test_digest_json_form(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 2, password="s3cret")
    client = await ShellyClient.connect(
        plug.host, plug.port, password="s3cret", clock=manual_clock, rpc_mode="frame"
    )
    async with client:
        await client.set_relay(True)
    frames = [e for e in plug.log if e.path == "/rpc"]
    assert frames[0].json_auth is None and frames[0].status == 401
    ncs = [e.json_auth["nc"] for e in frames[1:] if e.json_auth]
    assert ncs == list(range(1, len(ncs) + 1)) and len(ncs) >= 3
    assert plug.truth().relay_on


async def test_stale_nonce_is_renewed_not_a_wrong_password(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, 3, password="pw")
    async with await client_for(plug, manual_clock, password="pw") as client:
        await client.read()
        manual_clock.advance(3600)  # nonce expires after 1 h on fw 2.0
        await client.read()
    rpc = [e for e in plug.log if e.path.startswith("/rpc")]
    # connect: challenge + GetStatus; read; (1 h later) stale nonce refused, fresh nonce accepted
    assert [e.status for e in rpc] == [401, 200, 200, 401, 200]
    stale, renewed = (parse_auth_header(e.authorization)[1] for e in rpc[3:])  # type: ignore[arg-type]
    assert stale["nc"] == "00000003" and renewed["nc"] == "00000001"
    assert stale["nonce"] != renewed["nonce"]


async def test_an_unanswered_digest_request_starts_a_fresh_nonce(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    """A poll the plug never answers may or may not have used up its nc on the device; firmware 2.0
    refuses the next nc out of order as a wrong password. So the client starts a fresh nonce: the plug
    is read again at once, never locked out."""
    plug = await one(fleet_factory, 2, password="pw")
    async with await client_for(plug, manual_clock, password="pw", timeout_s=0.5) as client:
        await client.read()
        await plug.inject("hang", count=1)
        with pytest.raises(DeviceTimeoutError):
            await client.read()
        await plug.clear()
        assert (await client.read()).relay_on is False
        # and a switch, in its own lane with its own nonce, still goes through
        assert await client.set_relay(True) is True
    rpc = [e for e in plug.log if e.path.startswith("/rpc")]
    assert rpc[-1].status == 200 and not any(e.status == 401 and e.authorization for e in rpc[2:])


async def test_legacy_firmware_digest(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 2, password="pw", auth_mode="legacy")
    async with await client_for(plug, manual_clock, password="pw") as client:
        assert (await client.read()).relay_on is False


async def test_429_backs_off_drops_nonce_and_recovers(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, 3, password="pw")
    async with await client_for(plug, manual_clock, password="pw") as client:
        await plug.inject("throttle", count=2)
        t0 = manual_clock.now()
        await client.read()
        assert manual_clock.now() - t0 == 2.0 + 4.0  # backed off 2 s, then 4 s (client sleeps on our clock)
        last = plug.log[-1]
        assert last.status == 200
        # the cached nonce was dropped after the 429: a fresh challenge preceded the success
        assert plug.log[-2].status == 401 and plug.log[-2].authorization is None


async def test_persistent_429_is_device_busy(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 2)
    async with await client_for(plug, manual_clock) as client:
        await plug.inject("throttle")
        with pytest.raises(DeviceBusyError, match="429"):
            await client.read()


async def test_wrong_digest_password(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 4, password="right")
    with pytest.raises(DeviceAuthError, match=f"plug {MACS[4]} at .* rejected the password for admin"):
        await client_for(plug, manual_clock, password="wrong")


async def test_password_required_up_front(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 3, password="pw")
    with pytest.raises(DeviceAuthError, match="authentication enabled"):
        await client_for(plug, manual_clock)


async def test_gen1_basic_auth(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 1, password="pw", user="operator")
    async with await client_for(plug, manual_clock, password="pw", user="operator") as ok:
        await ok.set_relay(True)
    assert plug.truth().relay_on
    async with await client_for(plug, manual_clock, password="nope", user="operator") as bad:
        with pytest.raises(DeviceAuthError, match="rejected the credentials for 'operator'"):
            await bad.read()


# --- fault injection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("hang", DeviceTimeoutError),
        ("refuse", DeviceUnreachableError),
        ("reset", DeviceUnreachableError),
        ("unauthorized", DeviceAuthError),
        ("throttle", DeviceBusyError),
        ("non_json", InvalidResponse),
    ],
)
@pytest.mark.parametrize("gen", [1, 2])
async def test_fault_maps_to_device_error(
    fault: str, error: type[Exception], gen: int, fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, gen)
    async with await client_for(plug, manual_clock, timeout_s=0.5) as client:
        await plug.inject(fault)
        with pytest.raises(error):
            await client.read()
        await plug.clear()
        assert (await client.read()).mac == MACS[gen]


async def test_latency_within_and_beyond_the_timeout(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, 2)
    async with await client_for(plug, manual_clock, timeout_s=0.5) as client:
        await plug.inject("latency", seconds=0.05)
        assert (await client.read()).mac == MACS[2]
        await plug.inject("latency", seconds=2.0)
        with pytest.raises(DeviceTimeoutError, match=r"within 0\.5 s"):
            await client.read()


@pytest.mark.parametrize("gen", [1, 3])
async def test_missing_optional_fields(
    gen: int, fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    plug = await one(fleet_factory, gen)
    async with await client_for(plug, manual_clock) as client:
        await plug.inject("missing_fields")
        r = await client.read()
        assert r.temperature_c is None
        if gen == 3:
            assert r.current_a is None


async def test_moved_plug_is_followed(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    plug = await one(fleet_factory, 1)
    async with await client_for(plug, manual_clock, timeout_s=1.0) as client:
        old = plug.port
        await plug.move()
        assert plug.port != old
        with pytest.raises(DeviceUnreachableError):
            await client.read()
        client.move(plug.host, plug.port)
        await client.set_relay(True)
        assert plug.truth().relay_on


async def test_one_request_in_flight_per_device(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    import asyncio

    plug = await one(fleet_factory, 3, password="pw")
    async with await client_for(plug, manual_clock, password="pw") as client:
        await asyncio.gather(*(client.read() for _ in range(8)))
    ncs = [parse_auth_header(e.authorization)[1]["nc"] for e in plug.log if e.authorization]
    assert ncs == [f"{i:08x}" for i in range(1, len(ncs) + 1)]  # nc arrived in order, none rejected
    assert all(e.status == 200 for e in plug.log if e.authorization)


async def test_control_surface_over_http(fleet_factory: FleetFactory, manual_clock: ManualClock) -> None:
    import asyncio

    import httpx

    fleet = await fleet_factory([make_profile(1, MACS[1]), make_profile(2, MACS[2])])
    plug = fleet.plugs[1]
    async with httpx.AsyncClient(base_url=f"http://{plug.address}/__sim") as http:
        assert (await http.get("/load", params={"w": "1000"})).json()["power_w"] == 0.0  # relay still off
        async with await client_for(plug, manual_clock) as client:
            await client.set_relay(True)
        state = (await http.get("/advance", params={"s": "36"})).json()
        assert (state["power_w"], state["energy_mwh"], state["uptime_s"]) == (1000.0, 10_000, 36)
        assert fleet.plugs[0].truth().uptime_s == 36  # one clock for the whole fleet
        assert (await http.get("/fault", params={"kind": "non_json", "count": "1"})).json()["faults"] == [
            "non_json"
        ]
        assert (await http.get("/clear")).json() == {"faults": []}
        assert (await http.get("/trip")).json()["tripped"] is True
        assert (await http.get("/reboot")).json()["boots"] == 2
        log = (await http.get("/log")).json()
        assert {"method", "path", "status", "authorization"} <= set(log[0])
        assert any(e["path"].startswith("/rpc/Switch.Set") for e in log)
        assert (await http.get("/fault", params={"kind": "bogus"})).status_code == 400
        old = plug.port
        assert (await http.get("/move")).json() == {"moving": True}
    for _ in range(100):
        if plug.port != old:
            break
        await asyncio.sleep(0.05)
    assert plug.port != old
    async with await client_for(plug, manual_clock) as client:
        assert client.mac == MACS[2]


async def test_an_answer_past_max_response_bytes_is_refused_before_it_is_read(
    fleet_factory: FleetFactory,
) -> None:
    import httpx

    from chargectl.shelly.sim import wrong_mac_of

    fleet = await fleet_factory([make_profile(2, "AABBCC000001"), make_profile(1, "AABBCC000002")])
    gen2, gen1 = fleet.plugs
    for plug in (gen2, gen1):
        client = await ShellyClient.connect(plug.host, plug.port, max_response_bytes=4096, timeout_s=10)
        try:
            await plug.inject("huge_body", count=1)  # no Content-Length: stopped while reading
            with pytest.raises(InvalidResponse, match="more than 4096 bytes"):
                await client.read()
            assert (await client.read()).mac == plug.mac  # the next answer is fine again
            await plug.inject("wrong_mac", count=2)
            with pytest.raises(InvalidResponse, match=wrong_mac_of(plug.mac)):
                await client.read()
        finally:
            await client.aclose()

    # A declared Content-Length past the limit is refused without reading the body at all.
    def announce(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(10**9)}, content=b"{}")

    with pytest.raises(InvalidResponse, match="announced a 1000000000-byte answer"):
        await ShellyClient.connect("10.9.9.9", 80, transport=httpx.MockTransport(announce))
