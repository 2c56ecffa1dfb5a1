"""Automatic top-ups: one off-session charge per crossing of a user's threshold.

A user with ``auto_topup_threshold`` and ``auto_topup_amount`` set (``PUT /v1/auto-topup``) and a saved
card gets their amount charged when their balance in the account's currency (the ledger minus the running
cost of their live sessions) falls below the threshold. :func:`decide` is the pure core; :class:`AutoTopup`
reads the store, claims the charge with a compare-and-set on the user's :class:`AutoTopupState` (so two
processes never both charge), and charges the saved card with the Stripe idempotency key of that crossing.

- One charge per crossing: the state is disarmed by the charge and re-armed only once the balance is back
  at or above the threshold (credited by the webhook, as every top-up).
- Never two in flight: a claimed charge blocks the next until it is answered; a claim left by a crash is
  retried after ``in_flight_timeout_s`` with the same idempotency key, so Stripe charges it at most once.
- Authentication required (SCA): the account is flagged ``needs_payment_action`` (by the charge) and no
  further charge is made while it is; live sessions run on until out of credit as usual.
- Declined: recorded (``declined``, the card, the reason) and alerted; no retry until the user acts: a
  different saved card, or ``PUT /v1/auto-topup`` again.

The hub calls :meth:`AutoTopup.check_user` after it debits a session; ``chargectl app serve`` runs
:meth:`AutoTopup.sweep` periodically for balances eaten into by live sessions.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chargectl.common.alerts import AlertBook, AlertKind, Severity
from chargectl.common.codec import ChargeSession, UserAccount
from chargectl.common.errors import PaymentError
from chargectl.services.adapters.store import AutoTopupState, Store

if TYPE_CHECKING:
    from chargectl.common.clock import Clock
    from chargectl.services.payments.stripe_ops import StripeOps

__all__ = ["AutoTopup", "Decision", "decide", "reset_state", "spendable_minor"]

log = logging.getLogger("chargectl.payments.autotopup")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one user now: ``charge`` with ``entry_id`` (the crossing's idempotency key), and the
    state to store (``state is None``: nothing changes)."""

    charge: bool
    reason: str
    state: AutoTopupState | None = None
    entry_id: str = ""
    amount_minor: int = 0
    currency: str = ""


def decide(
    user: UserAccount,
    balance_minor: int,
    state: AutoTopupState,
    now_ms: int,
    in_flight_timeout_ms: int = 600_000,
) -> Decision:
    """The pure auto top-up rule (see the module docstring)."""
    threshold = user.auto_topup_threshold.amount_minor
    amount = user.auto_topup_amount.amount_minor
    currency = user.currency
    if amount <= 0 or not currency:
        return Decision(False, "auto top-up is off")
    if balance_minor >= threshold:
        if state.armed and not state.in_flight_key:
            return Decision(False, "balance above threshold")
        if state.in_flight_key and now_ms - state.in_flight_since_ms < in_flight_timeout_ms:
            return Decision(False, "a charge is in flight")
        rearmed = dataclasses.replace(state, armed=True, in_flight_key="", in_flight_since_ms=0)
        return Decision(False, "balance back above threshold: re-armed", rearmed)
    if state.in_flight_key:
        if now_ms - state.in_flight_since_ms < in_flight_timeout_ms:
            return Decision(False, "a charge is in flight")
        # A claim whose answer never came back (a crash): retry with the same key; Stripe charges once.
        return Decision(
            True,
            "retrying an unanswered charge",
            dataclasses.replace(state, in_flight_since_ms=now_ms),
            state.in_flight_key,
            amount,
            currency,
        )
    if not state.armed:
        return Decision(False, "already charged for this crossing")
    if user.needs_payment_action:
        return Decision(False, "waiting for the user to authenticate a payment")
    if not user.default_payment_method:
        return Decision(False, "no saved card")
    if state.declined and state.declined_card == user.default_payment_method:
        return Decision(False, "the saved card was declined; waiting for the user")
    crossing = state.crossing + 1
    entry_id = f"auto_{user.user_id}_{crossing}"
    claimed = dataclasses.replace(
        state,
        armed=False,
        crossing=crossing,
        in_flight_key=entry_id,
        in_flight_since_ms=now_ms,
        declined=False,
        declined_card="",
        decline_reason="",
    )
    return Decision(True, "balance below threshold", claimed, entry_id, amount, currency)


def spendable_minor(store: Store, user: UserAccount) -> int:
    """The user's balance in the account's currency minus the running cost of their live sessions."""
    currency = user.currency.lower()
    balance = sum(
        e.amount.amount_minor for e in store.ledger_entries(user.user_id) if e.amount.currency == currency
    )
    running = sum(
        s.cost.amount_minor
        for s in store.list_sessions(user_id=user.user_id, active_only=True)
        if s.status == ChargeSession.STATUS_ACTIVE and s.cost.currency.lower() in ("", currency)
    )
    return balance - running


def reset_state(store: Store, user_id: str, now_ms: int) -> None:
    """The user acted (new settings): armed again, no decline on record; an in-flight claim is kept."""
    for _ in range(20):
        state = store.get_topup_state(user_id) or AutoTopupState(user_id)
        fresh = dataclasses.replace(
            state,
            armed=True if not state.in_flight_key else state.armed,
            declined=False,
            declined_card="",
            decline_reason="",
            updated_at_ms=now_ms,
            version=state.version + 1,
        )
        if store.update_topup_state(fresh):
            return
    raise PaymentError(f"auto top-up state of {user_id} is contended; try again")


class AutoTopup:
    """Runs :func:`decide` against the store and charges through :class:`StripeOps`."""

    def __init__(
        self,
        store: Store,
        ops: StripeOps,
        clock: Clock,
        alerts: AlertBook | None = None,
        in_flight_timeout_s: float = 600.0,
    ) -> None:
        self.store = store
        self.ops = ops
        self.clock = clock
        self.alerts = alerts if alerts is not None else AlertBook()
        self.in_flight_timeout_ms = int(in_flight_timeout_s * 1000)

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def sweep(self) -> dict[str, str]:
        """Check every user with auto top-up on; uid -> what happened."""
        return {
            u.user_id: self.check_user(u.user_id)
            for u in self.store.list_users()
            if u.auto_topup_amount.amount_minor > 0
        }

    def check_user(self, uid: str) -> str:
        """Charge ``uid``'s saved card if their balance crossed the threshold (the hub calls this after a
        debit); returns what happened, in words."""
        user = self.store.get_user(uid)
        if user is None:
            return "no such user"
        now_ms = self._now_ms()
        state = self.store.get_topup_state(uid) or AutoTopupState(uid)
        decision = decide(user, spendable_minor(self.store, user), state, now_ms, self.in_flight_timeout_ms)
        if decision.state is not None:
            claimed = dataclasses.replace(decision.state, updated_at_ms=now_ms, version=state.version + 1)
            if not self.store.update_topup_state(claimed):
                return "another process is handling this user"
            state = claimed
        if not decision.charge:
            return decision.reason
        return self._charge(user, state, decision, now_ms)

    def _finish(self, state: AutoTopupState, **changes: object) -> None:
        done = dataclasses.replace(
            state,
            in_flight_key="",
            in_flight_since_ms=0,
            version=state.version + 1,
            **changes,  # type: ignore[arg-type]
        )
        if not self.store.update_topup_state(done):
            log.warning("auto top-up state of %s changed while charging; left as it is", state.user_id)

    def _charge(self, user: UserAccount, state: AutoTopupState, decision: Decision, now_ms: int) -> str:
        import stripe

        uid = user.user_id
        try:
            result = self.ops.charge_off_session(
                uid, decision.amount_minor, decision.currency, decision.entry_id
            )
        except PaymentError as exc:
            if isinstance(exc.__cause__, stripe.CardError):
                self._finish(
                    state,
                    armed=True,
                    declined=True,
                    declined_card=user.default_payment_method,
                    decline_reason=str(exc),
                    declined_at_ms=now_ms,
                    last_status="declined",
                    updated_at_ms=now_ms,
                )
                self.alerts.raise_alert(
                    AlertKind.PAYMENT_FAILED, uid, f"automatic top-up declined: {exc}", now_ms
                )
                log.warning("user %s: automatic top-up declined", uid)
                return "declined"
            # Not answered (Stripe unreachable, ...): the claim stays; retried later with the same key.
            log.warning("user %s: automatic top-up not answered: %s", uid, exc)
            return "not answered; will retry"
        if result.needs_action:
            self._finish(
                state,
                last_intent_id=result.payment_intent_id,
                last_status=result.status,
                updated_at_ms=now_ms,
            )
            self.alerts.raise_alert(
                AlertKind.PAYMENT_FAILED,
                uid,
                "automatic top-up needs the user to authenticate",
                now_ms,
                severity=Severity.INFO,
            )
            return "needs payment action"
        self._finish(
            state, last_intent_id=result.payment_intent_id, last_status=result.status, updated_at_ms=now_ms
        )
        log.info("user %s: automatic top-up %s: %s", uid, result.payment_intent_id, result.status)
        return "charged"
