"""Manage API keys from a shell with database access (no running gateway needed):

    python -m services.gateway.keys create --tenant acme --scopes submit,read [--name "billing export"]
    python -m services.gateway.keys list [--tenant acme]
    python -m services.gateway.keys revoke <id or prefix>

`create` prints the key once, on stdout; only its hash is stored, so it cannot be shown again.
"""

import argparse
import asyncio
import sys

import structlog

from libs.common.auth import Scope
from libs.common.db.session import create_engine, create_sessionmaker
from libs.common.domain import check_tenant
from libs.common.errors import NotFoundError
from libs.common.settings import DatabaseSettings
from services.gateway.apikeys import ApiKeyService


def _scopes(value: str) -> list[str]:
    scopes = [s.strip() for s in value.split(",") if s.strip()]
    known = {s.value for s in Scope}
    unknown = [s for s in scopes if s not in known]
    if not scopes or unknown:
        msg = f"scopes are a comma-separated list of {', '.join(sorted(known))}"
        raise argparse.ArgumentTypeError(msg)
    return scopes


def _tenant(value: str) -> str:
    try:
        return check_tenant(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.keys", description="Manage API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", type=_tenant, required=True)
    create.add_argument("--scopes", type=_scopes, required=True, help="comma-separated: submit, read, admin")
    create.add_argument("--name", default=None)
    listing = commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--tenant", type=_tenant, default=None)
    revoke = commands.add_parser("revoke", help="revoke a key, by id or prefix")
    revoke.add_argument("key")
    return parser


async def _run(args: argparse.Namespace) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is for the key alone
    engine = create_engine(DatabaseSettings())
    service = ApiKeyService(create_sessionmaker(engine))
    try:
        if args.command == "create":
            created = await service.create(args.tenant, args.scopes, args.name)
            print(f"id:     {created.id}\ntenant: {created.tenant}\nscopes: {','.join(created.scopes)}")  # noqa: T201
            print(f"key:    {created.key}")  # noqa: T201
            print("Store the key now: it is not stored and cannot be shown again.", file=sys.stderr)  # noqa: T201
        elif args.command == "list":
            for key in await service.list(args.tenant):
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                used = f"used {key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never used"
                columns = [str(key.id), f"opa_{key.prefix}_…", key.tenant, ",".join(key.scopes), state, used]
                print("  ".join([*columns, key.name or ""]))  # noqa: T201
        else:
            try:
                revoked = await service.revoke(args.key, None)
            except NotFoundError as exc:
                print(str(exc), file=sys.stderr)  # noqa: T201
                return 1
            print(f"revoked {revoked.id} (opa_{revoked.prefix}_…, tenant {revoked.tenant})")  # noqa: T201
        return 0
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
