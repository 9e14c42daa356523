"""``trimicro auth``: accounts, tokens, rules and revocations, as calls to the auth service."""

from __future__ import annotations

import argparse
import json
import os
from typing import TextIO

from .common import UsageError, admin_headers, auth_headers, client_node
from .discovery import wait_for, wait_seconds
from .options import client_options, plugin_options

__all__ = ["add_auth_parser", "auth"]


async def auth(args: argparse.Namespace, out: TextIO) -> int:
    """``trimicro auth user|token|rules|revoke|jwks``: calls to the auth service."""
    from ..auth import AUTH_SERVICE

    what = args.auth_command
    if what == "jwks":
        endpoint, body = "Auth.jwks", {}
    elif what == "user":
        action = args.user_action
        if action == "add":
            endpoint, body = (
                "Auth.add_account",
                {"id": args.id, "scopes": args.scope or [], "type": args.type},
            )
        elif action == "delete":
            endpoint, body = "Auth.delete_account", {"id": args.id}
        else:
            endpoint, body = "Auth.accounts", {}
    elif what == "token":
        secret = args.secret or os.environ.get("TRIMICRO_SECRET")
        if not secret:
            raise UsageError("auth token needs --secret or $TRIMICRO_SECRET")
        endpoint, body = "Auth.token", {"id": args.id, "secret": secret}
    elif what == "rules":
        action = args.rules_action
        if action == "create":
            parts = args.resource.split(":")
            if len(parts) != 3:
                raise UsageError("--resource is TYPE:NAME:ENDPOINT, e.g. service:greeter:Greeter.*")
            resource = {"type": parts[0], "name": parts[1], "endpoint": parts[2]}
            endpoint = "Auth.create_rule"
            body = {
                "id": args.id,
                "scope": args.scope,
                "resource": resource,
                "access": args.access,
                "priority": args.priority,
            }
        elif action == "delete":
            endpoint, body = "Auth.delete_rule", {"id": args.id}
        else:
            endpoint, body = "Auth.rules", {}
    else:
        given = {"token": args.jwt, "jti": args.jti, "account": args.account, "node": args.node}
        body = {k: v for k, v in given.items() if v}
        if len(body) != 1:
            raise UsageError("auth revoke takes exactly one of --jwt, --jti, --account, --node")
        endpoint = "Auth.revoke"
    async with client_node(args) as cluster:
        await wait_for(cluster, AUTH_SERVICE, wait_seconds(args))
        # Public keys: anyone may fetch them, without the authority key an admin token needs.
        headers = auth_headers(args) if what == "jwks" else admin_headers(args)
        result = await cluster.call(AUTH_SERVICE, endpoint, body, headers=headers)
    if what == "token" and not args.json:
        print(result["access"], file=out)  # the bare token, for $(trimicro auth token ...)
        return 0
    json.dump(result, out, indent=None if args.json else 2, default=str)
    print(file=out)
    return 0


def add_auth_parser(auth: argparse.ArgumentParser) -> None:
    what = auth.add_subparsers(dest="auth_command", required=True)
    user = what.add_parser("user", help="accounts")
    actions = user.add_subparsers(dest="user_action", required=True)
    add = actions.add_parser("add", help="create an account; prints its secret once")
    add.add_argument("id")
    add.add_argument("--scope", action="append", help="a scope (repeat for several)")
    add.add_argument("--type", choices=["user", "service"], default="user")
    actions.add_parser("delete", help="delete an account and revoke its tokens").add_argument("id")
    actions.add_parser("list", help="list accounts")
    token = what.add_parser("token", help="log in: print an access token")
    token.add_argument("id")
    token.add_argument("--secret", help="the account's secret (default $TRIMICRO_SECRET)")
    rules = what.add_parser("rules", help="access rules")
    rule_actions = rules.add_subparsers(dest="rules_action", required=True)
    rule_actions.add_parser("list", help="list rules")
    create = rule_actions.add_parser("create", help="add or replace a rule")
    create.add_argument("id")
    create.add_argument("--scope", default="*", help='"" public, "*" any account, else a scope')
    create.add_argument("--resource", required=True, help="TYPE:NAME:ENDPOINT, * for any")
    create.add_argument("--access", choices=["granted", "denied"], default="granted")
    create.add_argument("--priority", type=int, default=0)
    rule_actions.add_parser("delete", help="delete a rule").add_argument("id")
    revoke = what.add_parser("revoke", help="revoke a token, an account or a node")
    revoke.add_argument("--jwt", help="a token (access or refresh) to revoke")
    revoke.add_argument("--jti", help="the id of a token to revoke")
    revoke.add_argument("--account", help="an account: all its tokens stop working")
    revoke.add_argument("--node", help="a node id: its links are closed and refused")
    jwks = what.add_parser("jwks", help="print the keys tokens verify with, as a JWKS (RFC 7517)")
    for leaf in (add, actions.choices["delete"], actions.choices["list"], token, create, revoke, jwks):
        client_options(leaf, nested=True)
        plugin_options(leaf, nested=True)
    for leaf in (rule_actions.choices["list"], rule_actions.choices["delete"]):
        client_options(leaf, nested=True)
        plugin_options(leaf, nested=True)
