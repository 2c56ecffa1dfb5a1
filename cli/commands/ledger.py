"""``chargectl ledger``: the prepaid ledger — balances, operator credits, history."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The prepaid ledger: balances, operator credits and history.", no_args_is_help=True
    )

    @group.command("balance")
    def balance(
        ctx: typer.Context,
        user: Annotated[str, typer.Argument(help="The user's id.")],
        currency: Annotated[str, typer.Option("--currency", help="Currency of the balance.")] = "gbp",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """The user's balance: the sum of their ledger entries."""
        from chargectl.services.payments.ledger import Ledger
        from chargectl.services.payments.money import format_minor
        from chargectl.services.wiring import open_store

        store = open_store(ctx.obj.config())
        try:
            amount = Ledger(store).balance(user, currency)
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps({"user_id": user, "currency": currency.lower(), "balance_minor": amount}))
        else:
            typer.echo(f"{user}: {format_minor(amount, currency)}")

    @group.command("credit")
    def credit(
        ctx: typer.Context,
        user: Annotated[str, typer.Argument(help="The user's id.")],
        amount: Annotated[
            str,
            typer.Argument(help='Amount in major units, e.g. "5.00" (with --debit, taken off the balance).'),
        ],
        reason: Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the entry).")],
        currency: Annotated[str, typer.Option("--currency", help="Currency.")] = "gbp",
        entry_id: Annotated[
            str | None, typer.Option("--id", help="Entry id (makes a retried credit a no-op); default: new.")
        ] = None,
        debit: Annotated[
            bool, typer.Option("--debit", help="Take the amount off the balance (a correction).")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Post an operator adjustment: a goodwill credit, or with --debit a correction.

        A negative amount also debits, but needs "--" before it (ledger credit --user U -- -5.00).
        """
        from chargectl.common.errors import ConfigError
        from chargectl.common.ids import check_uid
        from chargectl.services.payments.ledger import Ledger
        from chargectl.services.payments.money import format_minor, parse_amount
        from chargectl.services.wiring import open_store

        check_uid(user)  # a typo or a pasted escape sequence must not open an account nobody can use
        negative = amount.strip().startswith("-")
        if negative and debit:
            raise ConfigError("--debit takes a positive amount (it is taken off the balance)")
        minor = parse_amount(amount.strip().lstrip("-"), currency)
        if negative or debit:
            minor = -minor
        if minor == 0:
            raise ConfigError("amount must not be zero")
        if not reason.strip():
            raise ConfigError("--reason must not be empty")
        eid = entry_id or f"adj-{uuid.uuid4().hex[:16]}"
        store = open_store(ctx.obj.config())
        try:
            ledger = Ledger(store)
            if store.get_user(user) is None:  # crediting a new user opens their account (the hub needs one)
                from chargectl.common.codec import UserAccount

                now_ms = int(time.time() * 1000)
                new_account = UserAccount(user_id=user, currency=currency, created_at_ms=now_ms)
                # Created only if still absent: the app may have opened it since we looked.
                store.update_user(user, lambda account: new_account if account is None else None)
            posted = ledger.post(
                eid,
                user,
                "adjustment",
                minor,
                currency,
                int(time.time() * 1000),
                reference="operator",
                description=reason.strip(),
            )
            total = ledger.balance(user, currency)
        finally:
            store.close()
        if as_json:
            typer.echo(
                json.dumps({"entry_id": eid, "posted": posted, "amount_minor": minor, "balance_minor": total})
            )
        elif posted:
            typer.echo(
                f"posted {eid}: {format_minor(minor, currency)}; balance {format_minor(total, currency)}"
            )
        else:
            typer.echo(f"{eid} was already posted; balance {format_minor(total, currency)}")

    @group.command("history")
    def history(
        ctx: typer.Context,
        user: Annotated[str, typer.Argument(help="The user's id.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Every ledger entry of the user, oldest first, with the running balance."""
        from dataclasses import asdict

        from chargectl.services.payments.ledger import Ledger
        from chargectl.services.payments.money import format_minor
        from chargectl.services.wiring import open_store

        store = open_store(ctx.obj.config())
        try:
            rows = Ledger(store).history(user)
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps([asdict(p) for p in rows], indent=2))
            return
        from rich.table import Table

        from chargectl.cli.output import id_column, print_table

        table = Table(title=f"Ledger of {user}")
        table.add_column("when")
        id_column(table, "entry")
        for col in ("kind", "amount", "balance", "description"):
            table.add_column(col)
        running: dict[str, int] = {}
        for p in rows:
            running[p.currency] = running.get(p.currency, 0) + p.amount_minor
            table.add_row(
                time.strftime("%Y-%m-%d %H:%M", time.localtime(p.created_at_ms / 1000)),
                p.entry_id,
                p.kind,
                format_minor(p.amount_minor, p.currency),
                format_minor(running[p.currency], p.currency),
                p.description,
            )
        print_table(table)

    app.add_typer(group, name="ledger")
