"""The operator's commands for deployments and credentials:
`python -m service deployments ...` and `python -m service credentials ...`.

They change the same database the admin API does. A credential's secret is read from
standard input (or an environment variable named on the command line), never taken as an
argument, so it stays out of shell history and process listings.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator, Iterable

from aigne.hub.v1 import deployment_service_pb2 as pb
from service import config, db
from service.api.deployments import DeploymentServicer
from service.catalog.models import load_registry
from service.config import Settings
from service.errors import InvalidArgument, KnownSecrets
from service.net.fetch import GuardedFetcher, image_fetch_limits
from service.providers.base import ProviderDeps
from service.routing.deployments import DeploymentStore, environment_deployments
from service.routing.policy import routing_policy
from service.routing.router import Router
from service.routing.secretbox import SecretBox


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deployments = commands.add_parser("deployments", help="manage deployments").add_subparsers(
        dest="action", required=True)
    add = deployments.add_parser("add", help="add a deployment")
    add.add_argument("name")
    add.add_argument("--kind", required=True, choices=("openai", "azure", "gemini", "vertex"))
    _deployment_options(add)
    change = deployments.add_parser("set", help="change a deployment; options not named stay")
    change.add_argument("deployment", help="its id or name")
    _deployment_options(change)
    deployments.add_parser("list", help="list deployments, credentials and their health")
    remove = deployments.add_parser("remove", help="remove a deployment and its credentials")
    remove.add_argument("deployment")
    test = deployments.add_parser("test", help="one tiny real generation per deployment")
    test.add_argument("deployment", nargs="?", default="")
    deployments.add_parser("reseal", help="re-encrypt every secret with the first "
                                          "AIGNE_HUB_CREDENTIALS_KEY (after a rotation)")
    credentials = commands.add_parser("credentials", help="manage provider credentials"
                                      ).add_subparsers(dest="action", required=True)
    add_credential = credentials.add_parser(
        "add", help="add a credential; the secret is read from standard input")
    add_credential.add_argument("deployment")
    add_credential.add_argument("--name", default="credential")
    add_credential.add_argument("--weight", type=int, default=1)
    add_credential.add_argument("--secret-env", help="read the secret from this variable")
    set_credential = credentials.add_parser("set", help="set weight, enable or disable")
    set_credential.add_argument("credential")
    set_credential.add_argument("--weight", type=int, default=1)
    set_credential.add_argument("--disable", action="store_true")
    remove_credential = credentials.add_parser("remove", help="remove a credential")
    remove_credential.add_argument("credential")


def _deployment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="the upstream's base URL (Azure: its endpoint)")
    parser.add_argument("--api-version", help="Azure: the API version")
    parser.add_argument("--models", help="models served, comma-separated; 'all' for every one")
    parser.add_argument("--map", action="append", default=None, metavar="MODEL=NAME",
                        help="the upstream name of a model (Azure: its deployment name)")
    parser.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                        help="a kind-specific option, e.g. project=... for vertex")
    parser.add_argument("--priority", type=int, help="lower goes first (default 0)")
    parser.add_argument("--weight", type=int, help="share within a priority (default 1)")
    parser.add_argument("--disabled", action="store_true", help="take no traffic")
    parser.add_argument("--enabled", action="store_true", help="take traffic again")


@contextlib.asynccontextmanager
async def _servicer(settings: Settings
                    ) -> AsyncIterator[tuple[DeploymentServicer, DeploymentStore]]:
    settings = settings.with_generated_secrets()
    assert settings.credentials_key is not None
    database = db.Database.open(settings.db_url)
    store = DeploymentStore(database, SecretBox(settings.credentials_key.get_secret_value()))
    fetcher = GuardedFetcher(image_fetch_limits(settings))
    router = Router(store, environment_deployments(settings), routing_policy(settings),
                    ProviderDeps(fetcher, KnownSecrets()))
    try:
        await db.migrate(database.engine)
        yield DeploymentServicer(store, router, load_registry(settings.models_file)), store
    finally:
        await router.aclose()
        await fetcher.aclose()
        await database.dispose()


async def deployments_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _servicer(settings) as (admin, store):
        if args.action == "add":
            created = await admin.CreateDeployment(pb.CreateDeploymentRequest(
                deployment=_changed(pb.Deployment(name=args.name, kind=args.kind, enabled=True),
                                    args)), None)
            print(f"added {created.deployment.id} ({created.deployment.name})")
        elif args.action == "set":
            listing = await admin.ListDeployments(pb.ListDeploymentsRequest(), None)
            current = next((d for d in listing.deployments
                            if args.deployment in (d.id, d.name)), None)
            if current is None or current.source != "api":
                raise InvalidArgument(f"no stored deployment '{args.deployment}'")
            updated = await admin.UpdateDeployment(pb.UpdateDeploymentRequest(
                deployment_id=current.id, deployment=_changed(current, args)), None)
            print(f"changed {updated.deployment.id} ({updated.deployment.name})")
        elif args.action == "list":
            print(_table((await admin.ListDeployments(pb.ListDeploymentsRequest(), None))
                         .deployments))
        elif args.action == "remove":
            await admin.DeleteDeployment(pb.DeleteDeploymentRequest(
                deployment_id=args.deployment), None)
            print(f"removed {args.deployment}")
        elif args.action == "test":
            tested = await admin.TestDeployments(pb.TestDeploymentsRequest(
                deployment_id=args.deployment), None)
            for result in tested.results:
                print(f"{result.name:24} {result.model:28} {result.status:24} "
                      f"{result.latency_ms:>9.1f} ms {result.message}")
        else:
            print(f"re-encrypted {await store.reseal()} secret(s)")
    return 0


async def credentials_command(settings: Settings, args: argparse.Namespace) -> int:
    async with _servicer(settings) as (admin, _):
        if args.action == "add":
            secret = config.variable(args.secret_env) if args.secret_env else \
                sys.stdin.readline().strip()
            added = await admin.AddCredential(pb.AddCredentialRequest(
                deployment_id=args.deployment, name=args.name, secret=secret,
                weight=args.weight), None)
            print(f"added {added.credential.id} ({added.credential.name}); the secret is "
                  "stored encrypted and will not be shown")
        elif args.action == "set":
            changed = await admin.UpdateCredential(pb.UpdateCredentialRequest(
                credential_id=args.credential, weight=args.weight,
                enabled=not args.disable), None)
            print(f"{changed.credential.id}: {changed.credential.state}, "
                  f"weight {changed.credential.weight}")
        else:
            await admin.DeleteCredential(pb.DeleteCredentialRequest(
                credential_id=args.credential), None)
            print(f"removed {args.credential}")
    return 0


def _changed(message: pb.Deployment, args: argparse.Namespace) -> pb.Deployment:
    """`message` with what the options name set."""
    changed = pb.Deployment()
    changed.CopyFrom(message)
    for field in ("base_url", "api_version", "priority", "weight"):
        value = getattr(args, field)
        if value is not None:
            setattr(changed, field, value)
    if args.models is not None:
        del changed.models[:]
        if args.models != "all":
            changed.models.extend(m.strip() for m in args.models.split(",") if m.strip())
    for option, target in (("map", changed.model_map), ("option", changed.options)):
        for pair in getattr(args, option) or []:
            key, sep, value = pair.partition("=")
            if not sep:
                raise InvalidArgument(f"--{option} takes KEY=VALUE; got '{pair}'")
            target[key.strip()] = value.strip()
    if args.disabled or args.enabled:
        changed.enabled = args.enabled
    return changed


def _table(deployments: Iterable[pb.Deployment]) -> str:
    lines = [f"{'id':22} {'name':20} {'kind':7} {'prio':>4} {'wt':>3} {'state':9} "
             f"{'test':>12}  models / credentials"]
    for d in deployments:
        test = f"{d.last_test_status} {d.last_test_latency_ms:.0f}ms" if d.last_test_status else ""
        lines.append(f"{d.id:22} {d.name:20} {d.kind:7} {d.priority:>4} {d.weight:>3} "
                     f"{d.state:9} {test:>12}  {','.join(d.models) or 'all'}")
        lines += [f"{'':24}credential {c.id} {c.name!r} weight {c.weight}: {c.state}"
                  + (f" ({c.disabled_reason})" if c.disabled_reason else "")
                  for c in d.credentials]
    return "\n".join(lines)

