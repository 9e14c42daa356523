"""``trimicro plugins``: every plugin group with its installed schemes and distributions."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

import trio

from .. import plugins
from .common import print_table

__all__ = ["list_plugins"]


async def list_plugins(args: argparse.Namespace, out: TextIO) -> int:
    """Every plugin group with its installed schemes and the distribution providing each."""
    await trio.lowlevel.checkpoint()
    found = {group: plugins.installed(group) for group in plugins.GROUPS.values()}
    if args.json:
        json.dump(found, out, indent=2)
        print(file=out)
        return 0
    rows = [
        [group, f"{scheme}://", dist] for group, schemes in found.items() for scheme, dist in schemes.items()
    ]
    rows += [[group, "-", "(none installed)"] for group, schemes in found.items() if not schemes]
    print_table(rows, ["group", "scheme", "distribution"], out)
    return 0
