"""The operator's commands on the database: `python -m service keys ...` and `usage`.

They run against the same database and code as the server (the admin API and
`GET /api/usage` answer the same things), so they work while it runs, and without it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service import db
from service.accounting.keys import ApiKey, KeyLimits, KeyStore
from service.accounting.quotas import Quotas
from service.accounting.usage import UsageReports, UsageSummary, UsageTotal
from service.api.usage import DEFAULT_DAYS, EVERY_KEY, parse_date
from service.catalog.models import load_registry
from service.config import Settings
from service.errors import InvalidArgument


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True)
    create = keys.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may call the admin API")
    _limit_options(create)
    keys.add_parser("list", help="list keys (id, prefix, state, limits, name)")
    limits = keys.add_parser("limits", help="change a key's limits; those not named stay")
    limits.add_argument("key", help="the key's id or prefix")
    _limit_options(limits)
    revoke = keys.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    usage = commands.add_parser("usage", help="usage totals per day and model")
    usage.add_argument("--key", default=EVERY_KEY, help="a key's id (default: every key)")
    usage.add_argument("--since", help="first UTC day, YYYY-MM-DD (default: 29 days ago)")
    usage.add_argument("--until", help="last UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--model", default="", help="only this model")


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", help="allowed models, comma-separated; 'all' for every one")
    parser.add_argument("--daily", type=int, help="images per UTC day; 0 for no quota")
    parser.add_argument("--monthly", type=int, help="images per UTC month; 0 for no quota")
    parser.add_argument("--rpm", type=int, help="requests per minute; 0 for no limit")
    parser.add_argument("--expires", help="YYYY-MM-DD or an ISO time (UTC unless given); "
                                          "'never' for no expiry")


@dataclass
class Books:
    """What the keys and usage commands work on."""

    keys: KeyStore
    quotas: Quotas
    reports: UsageReports


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Books]:
    settings = settings.with_generated_secrets()
    assert settings.key_hash_secret is not None
    database = db.Database.open(settings.db_url)
    try:
        await db.migrate(database.engine)
        yield Books(KeyStore(database, settings.key_hash_secret.get_secret_value().encode()),
                    Quotas(database), UsageReports(database))
    finally:
        await database.dispose()


async def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    models = load_registry(settings.models_file)
    async with database(settings) as data:
        if args.action == "create":
            limits = _limits(KeyLimits(), args).checked(models)
            key, token = await data.keys.create(args.name, admin=args.admin, limits=limits)
            print(f"created {key.id} ({key.name}{', admin' if key.admin else ''})")
            print(f"key (shown once, keep it safe): {token}")
        elif args.action == "list":
            keys, token = await data.keys.list()
            while token:
                more, token = await data.keys.list(page_token=token)
                keys += more
            used = await data.quotas.used([key.id for key in keys])
            print(f"{'id':22} {'prefix':14} {'state':8} {'admin':6} {'today':>6} "
                  f"{'month':>7}  limits / name")
            for key in keys:
                today, month = used[key.id]
                print(f"{key.id:22} {key.prefix:14} {_state(key):8} "
                      f"{'yes' if key.admin else 'no':6} {today:>6} {month:>7}  "
                      f"{_describe(key.limits)} / {key.name}")
        elif args.action == "limits":
            key = await data.keys.get(args.key)
            limits = _limits(key.limits, args).checked(models)
            key = await data.keys.set_limits(key.id, limits)
            print(f"limits of {key.id} ({key.name}): {_describe(key.limits)}")
        else:
            key = await data.keys.revoke(args.key)
            print(f"revoked {key.id} ({key.name})")
    return 0


async def usage_command(settings: Settings, args: argparse.Namespace) -> int:
    until = parse_date("--until", args.until or "") or datetime.now(UTC).date()
    since = parse_date("--since", args.since or "") or until - timedelta(days=DEFAULT_DAYS - 1)
    async with database(settings) as data:
        summary = await data.reports.summary(None if args.key == EVERY_KEY else args.key,
                                             since, until, args.model)
    who = "every key" if args.key == EVERY_KEY else args.key
    print(f"usage of {who}, {since} to {until} (UTC days)\n")
    print(usage_table(summary))
    return 0


def usage_table(summary: UsageSummary) -> str:
    """The totals as GET /api/usage gives them: per day and model, per model, overall."""
    header = (f"{'date':10}  {'model':24} {'requests':>8} {'failed':>6} {'images':>7} "
              f"{'bytes':>12} {'cost USD':>12} {'credits':>12}")
    lines = [header]
    lines += [_row(t.day.isoformat() if t.day else "", t) for t in summary.days]
    lines += ["", "per model"] + [_row("", t) for t in summary.models]
    lines += ["", _row("total", summary.total)]
    return "\n".join(lines)


def _row(label: str, t: UsageTotal) -> str:
    return (f"{label:10}  {t.model:24} {t.requests:>8} {t.failed_requests:>6} {t.images:>7} "
            f"{t.bytes:>12} {t.cost.usd:>12.6f} {t.cost.credits:>12.3f}")


def _limits(current: KeyLimits, args: argparse.Namespace) -> KeyLimits:
    """`current` with the limits named on the command line changed."""
    changes: dict[str, object] = {}
    if args.models is not None:
        names = tuple(m.strip() for m in args.models.split(",") if m.strip())
        changes["allowed_models"] = None if names in ((), ("all",)) else names
    for option, name in (("daily", "daily_image_quota"), ("monthly", "monthly_image_quota"),
                         ("rpm", "requests_per_minute")):
        value = getattr(args, option)
        if value is not None:
            changes[name] = value or None
    if args.expires is not None:
        changes["expires_at"] = None if args.expires == "never" else _moment(args.expires)
    return dataclasses.replace(current, **changes)  # type: ignore[arg-type]


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"--expires must be YYYY-MM-DD, an ISO time or 'never'; "
                              f"got '{text}'", param="--expires") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _state(key: ApiKey) -> str:
    if key.revoked_at:
        return "revoked"
    expires = key.limits.expires_at
    return "expired" if expires is not None and expires <= datetime.now(UTC) else "active"


def _describe(limits: KeyLimits) -> str:
    parts = []
    if limits.allowed_models is not None:
        parts.append("models " + ",".join(limits.allowed_models))
    for value, what in ((limits.daily_image_quota, "images/day"),
                        (limits.monthly_image_quota, "images/month"),
                        (limits.requests_per_minute, "requests/min")):
        if value is not None:
            parts.append(f"{value} {what}")
    if limits.expires_at is not None:
        parts.append(f"expires {limits.expires_at.isoformat()}")
    return "; ".join(parts) or "no limits"
