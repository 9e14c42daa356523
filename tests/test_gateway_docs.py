"""The curl commands of docs/gateway.md's "Examples" run as printed, against `trimicro run
examples/services.py` and `trimicro api` in their own processes (a new user copies them first:
they once sent a form content type and every one of them was a 400).

Each command runs in a shell with ``localhost:8080`` replaced by the gateway's address and
``$TOKEN`` an admin token of the test's home; the status it must get is 200, or the one its
``# NNN`` comment names. The two subscriptions (``curl -N``) run until ``--max-time``: they must
have been answered 200 (an event stream) by then.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from functools import partial
from pathlib import Path

import httpx
import trio
from procs import python_process

from trimicro.cluster.auth import Account, issue_token
from trimicro.mailbox.secure.identity import dev_authority

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "gateway.md"
CLI = ("-m", "trimicro.cluster.cli")


def commands() -> list[str]:
    """The page's curl lines (the "Examples" section's indented block)."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    curl ")]


def expected(command: str) -> int:
    found = re.search(r"#\s*(\d{3})\b", command)
    return int(found[1]) if found else 200


def test_the_page_has_the_commands() -> None:
    found = commands()
    assert len(found) >= 5 and any("-N" in c for c in found) and any(expected(c) == 400 for c in found)


async def test_the_curl_examples_get_what_the_page_says(tmp_path: Path) -> None:
    assert shutil.which("curl"), "curl is needed (.ci/run installs it)"
    registry = ("--registry", f"mdns://?type=_t{uuid.uuid4().hex[:10]}._tcp.local.")
    home = ("--home", str(tmp_path))
    serve = (*CLI, *home, *registry, "run", str(ROOT / "examples" / "services.py"), "--name", "docs-node")
    api = (*CLI, *home, *registry, "api", "--address", "127.0.0.1:0")
    async with python_process(*serve) as node, python_process(*api) as gateway:
        with trio.fail_after(60):
            while not (await node.line()).startswith("node docs-node at"):
                pass
            line = await gateway.line()
        assert line.startswith("gateway "), line
        address = line.split(" at http://", 1)[1].split()[0]
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http:
            with trio.fail_after(60):
                while True:  # until the gateway's registry view has the service (no sync point)
                    r = await http.post("/api/greeter/Greeter.hello", json={"name": "x"})
                    if r.status_code != 404:
                        break
                    await trio.sleep(0.1)
        authority = dev_authority(tmp_path)
        admin = Account("admin", "user", authority.public_key.hex(), ("admin",))
        env = dict(os.environ, TOKEN=issue_token(authority.signing_key, admin, ttl=300))
        for command in commands():
            shell = command.split(" #", 1)[0].replace("localhost:8080", address)
            shell += " --max-time 3 -o /dev/null -w '%{http_code}'"
            run = partial(subprocess.run, shell, shell=True, env=env, capture_output=True, text=True)
            with trio.fail_after(30):
                done = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
            assert done.stdout.strip() == str(expected(command)), (command, done.stdout, done.stderr)
