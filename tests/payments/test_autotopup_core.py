"""The auto top-up rule without servers: one charge per threshold crossing, never two in flight, SCA and
declines stop retries until the user acts."""

from __future__ import annotations

import dataclasses

from chargectl.common.codec import Money, UserAccount
from chargectl.services.adapters.store import AutoTopupState
from chargectl.services.payments.autotopup import decide

NOW = 1_767_225_600_000


def user(**extra: object) -> UserAccount:
    u = UserAccount(
        user_id="u1",
        currency="gbp",
        stripe_customer_id="cus_1",
        default_payment_method="pm_1",
        auto_topup_threshold=Money(amount_minor=500, currency="gbp"),
        auto_topup_amount=Money(amount_minor=1000, currency="gbp"),
    )
    for k, v in extra.items():
        setattr(u, k, v)
    return u


def test_off_or_above_threshold_does_nothing() -> None:
    off = UserAccount(user_id="u1", currency="gbp", default_payment_method="pm_1")
    assert not decide(off, 0, AutoTopupState("u1"), NOW).charge
    assert decide(user(), 500, AutoTopupState("u1"), NOW).charge is False  # at the threshold is not below it


def test_one_charge_per_crossing_then_rearmed_above_threshold() -> None:
    first = decide(user(), 499, AutoTopupState("u1"), NOW)
    assert first.charge and first.amount_minor == 1000 and first.currency == "gbp"
    assert first.entry_id == "auto_u1_1"
    assert first.state is not None and first.state.in_flight_key == "auto_u1_1" and not first.state.armed
    # While it is in flight, and after it was answered, the balance still below: no second charge.
    assert not decide(user(), 100, first.state, NOW + 1000).charge
    answered = dataclasses.replace(first.state, in_flight_key="", in_flight_since_ms=0)
    assert decide(user(), 100, answered, NOW + 2000).reason == "already charged for this crossing"
    # The credit arrives: re-armed; the next crossing is a new key.
    rearmed = decide(user(), 1099, answered, NOW + 3000)
    assert not rearmed.charge and rearmed.state is not None and rearmed.state.armed
    second = decide(user(), 450, rearmed.state, NOW + 4000)
    assert second.charge and second.entry_id == "auto_u1_2"


def test_a_claim_left_by_a_crash_is_retried_with_the_same_key_after_the_timeout() -> None:
    claimed = decide(user(), 0, AutoTopupState("u1"), NOW).state
    assert claimed is not None
    assert not decide(user(), 0, claimed, NOW + 599_000, in_flight_timeout_ms=600_000).charge
    retry = decide(user(), 0, claimed, NOW + 600_000, in_flight_timeout_ms=600_000)
    assert retry.charge and retry.entry_id == claimed.in_flight_key


def test_sca_and_missing_card_block_charges() -> None:
    assert decide(user(needs_payment_action=True), 0, AutoTopupState("u1"), NOW).reason.startswith("waiting")
    assert decide(user(default_payment_method=""), 0, AutoTopupState("u1"), NOW).reason == "no saved card"


def test_a_decline_waits_for_a_new_card() -> None:
    declined = AutoTopupState(
        "u1", armed=True, declined=True, declined_card="pm_1", decline_reason="card_declined"
    )
    assert not decide(user(), 0, declined, NOW).charge
    fresh = decide(user(default_payment_method="pm_2"), 0, declined, NOW)
    assert fresh.charge and fresh.state is not None and not fresh.state.declined
