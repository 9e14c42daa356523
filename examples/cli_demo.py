"""The CLI tour: run the example services on a node, then discover and call them with `trimicro`.

Run: python examples/cli_demo.py

It starts ``trimicro run examples/services.py`` (a node announcing itself with mDNS on
127.0.0.1 only), then runs the commands a user would type in another terminal, printing each
one and its output, and finally stops the node with SIGINT (it deregisters and drains first).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def trimicro() -> list[str]:
    exe = shutil.which("trimicro", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "trimicro.cluster.cli"]


def show(args: list[str], env: dict[str, str], stdin: str | None = None, shown: str | None = None) -> None:
    print(f"$ trimicro {shown or shlex.join(args)}", flush=True)
    result = subprocess.run(
        [*trimicro(), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    print(result.stdout + result.stderr, end="", flush=True)
    print(f"(exit {result.returncode})\n", flush=True)


def capture(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [*trimicro(), *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def main() -> None:
    env = dict(os.environ, TRIMICRO_HOME=tempfile.mkdtemp(prefix="trimicro-demo-"))
    store_dir = tempfile.mkdtemp(prefix="trimicro-demo-store-")
    server = subprocess.Popen(
        [*trimicro(), "run", str(HERE / "services.py"), "--name", "demo-node", "--store", store_dir],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        print(server.stdout.readline(), end="", flush=True)  # "node demo-node at ... serving ..."
        show(["services"], env)
        show(["describe", "greeter"], env)
        show(["call", "greeter", "Greeter.hello", '{"name": "Ada"}'], env)
        show(["call", "counter", "Counter.add", '{"k": 2}'], env)
        show(["call", "greeter", "Greeter.hello", '{"name": ""}'], env)
        show(["stream", "greeter", "Greeter.shout"], env, stdin='"one"\n"two"\n')
        show(["nodes"], env)
        show(["store", "write", "greeting", "hello from the store"], env)
        show(["store", "read", "greeting"], env)
        show(["store", "list"], env)

        # Pub/sub: a subscriber in one process, a publisher in another.
        print("$ trimicro subscribe 'orders.*' --count 1   (in the background)", flush=True)
        sub = subprocess.Popen(
            [*trimicro(), "subscribe", "orders.*", "--count", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sub.stderr is not None
        sub.stderr.readline()  # "# subscribed to orders.*"
        show(["publish", "orders.created", '{"id": 7}'], env)
        out, _ = sub.communicate(timeout=30)
        print(f"subscriber printed: {out}", end="", flush=True)

        # Auth: an account and its token, then rules that let only admins call the greeter.
        print("$ trimicro auth user add alice --scope admin --json", flush=True)
        secret = json.loads(capture(["auth", "user", "add", "alice", "--scope", "admin", "--json"], env))[
            "secret"
        ]
        print("(the secret is printed once)\n", flush=True)
        token = capture(["auth", "token", "alice", f"--secret={secret}"], env).strip()
        print(f"$ trimicro auth token alice --secret ...\n{token[:20]}... (a JWT, EdDSA)\n", flush=True)
        resource = "service:greeter:Greeter.*"
        show(["auth", "rules", "create", "greeter-admins", "--scope", "admin", "--resource", resource], env)
        show(["auth", "rules", "delete", "default"], env)
        show(["call", "greeter", "Greeter.hello", '{"name": "Eve"}'], env)
        alice = ["call", "greeter", "Greeter.hello", '{"name": "Alice"}']
        show([*alice, "--token", token], env, shown=f"{shlex.join(alice)} --token $TOKEN")
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=30)
        print(out, end="")


if __name__ == "__main__":
    main()
