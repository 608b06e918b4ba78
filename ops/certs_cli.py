"""`sundesk certs init` and `sundesk tokens issue`: the trust material of a federation.

``--dir`` defaults to ``$SUNDESK_CERTS`` or ``var/certs``. ``tokens issue`` prints only
the token on stdout, so ``export SUNDESK_TOKEN=$(sundesk tokens issue ...)`` works; what
it grants goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.auth import issue_token, verify_token
from ops.certs import DEFAULT_REGIONS, init_certs, load_token_secret

DEFAULT_TTL = 12 * 3600  # a shift and some


def default_dir() -> str:
    return os.environ.get("SUNDESK_CERTS", "var/certs")


def add_parser(sub: Any) -> None:
    dir_arg = argparse.ArgumentParser(add_help=False)
    dir_arg.add_argument(
        "--dir", default=default_dir(), help="certs directory (default $SUNDESK_CERTS or var/certs)"
    )

    certs = sub.add_parser("certs", help="the federation's CA, certificates and keys")
    csub = certs.add_subparsers(dest="certs_cmd", required=True, metavar="COMMAND")
    p = csub.add_parser(
        "init", parents=[dir_arg], help="create the CA, node and client certificates, signing keys"
    )
    p.add_argument(
        "--regions",
        default=",".join(DEFAULT_REGIONS),
        help="comma-separated region names (default: the five regions)",
    )
    p.add_argument(
        "--hosts", default="", help="comma-separated extra DNS names or IPs for node and etcd certs"
    )
    p.add_argument("--days", type=int, default=825, help="validity of issued certificates")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace everything (invalidates every token and signature)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_init)

    tokens = sub.add_parser("tokens", help="tokens for agents, on-call, ops and machines")
    tsub = tokens.add_subparsers(dest="tokens_cmd", required=True, metavar="COMMAND")
    p = tsub.add_parser("issue", parents=[dir_arg], help="print a new token")
    p.add_argument("--role", required=True, help="agent, oncall, ops or machine")
    p.add_argument("--subject", default="", help="who: the person (agent, oncall) or tool")
    p.add_argument("--region", default=None, help="the holder's home region")
    p.add_argument("--asset", default=None, help="machine tokens: the asset it speaks for")
    p.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL,
        help=f"seconds until it expires (default {DEFAULT_TTL}; 0: never)",
    )
    p.set_defaults(func=_cmd_issue)


def _cmd_init(args: argparse.Namespace) -> int:
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    paths = init_certs(Path(args.dir), regions, days=args.days, overwrite=args.force, hosts=hosts)
    if args.json:
        print(
            json.dumps(
                {
                    "dir": str(paths.dir),
                    "regions": list(paths.regions),
                    "created": [str(p) for p in paths.created],
                },
                indent=2,
            )
        )
        return 0
    if paths.created:
        print(f"{paths.dir}: created {len(paths.created)} files")
        for path in paths.created:
            print(f"  {path.relative_to(paths.dir)}")
    else:
        print(f"{paths.dir}: everything is already there (use --force to start over)")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    secret = load_token_secret(Path(args.dir))
    now = datetime.now(UTC)
    token = issue_token(
        secret,
        args.role,
        region=args.region,
        asset=args.asset,
        subject=args.subject,
        ttl_seconds=args.ttl or None,
        now=now,
    )
    claims = verify_token(secret, token, now)
    until = (
        datetime.fromtimestamp(claims.expires_at, UTC).isoformat()
        if claims.expires_at is not None
        else "never"
    )
    print(f"token for {claims.caller}; expires {until}", file=sys.stderr)
    print(token)
    return 0


__all__ = ["add_parser"]
