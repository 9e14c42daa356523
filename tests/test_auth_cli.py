"""Auth through the `trimicro` command, across real processes: the JWKS it prints verifies the
cluster's tokens in another JWT library, a refused `publish` is an error (not "1 deliveries"),
and the store `trimicro run --store` creates is owner-only."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
import pytest

from trimicro.cluster.auth import Account, issue_token
from trimicro.mailbox.secure.identity import Authority

ROOT = Path(__file__).resolve().parent.parent


def trimicro() -> list[str]:
    """The installed console script (as a user runs it), else the module."""
    exe = shutil.which("trimicro", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "trimicro.cluster.cli"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*trimicro(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def ok(env: dict[str, str], *args: str) -> str:
    result = cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def served(tmp_path: Path, *options: str) -> Iterator[dict[str, str]]:
    """``trimicro [OPTIONS] run examples/services.py --store``: the node that also runs the auth
    service."""
    env = dict(os.environ, TRIMICRO_HOME=str(tmp_path / "home"))
    env.pop("TRIMICRO_AUDIENCE", None)
    server = subprocess.Popen(
        [
            *trimicro(),
            *options,
            "run",
            str(ROOT / "examples" / "services.py"),
            "--name",
            f"auth-{uuid.uuid4().hex[:8]}",
            "--store",
            str(tmp_path / "store"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "serving auth" in server.stdout.readline()  # up and registered
        yield env
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


@contextmanager
def http_serving(body: bytes) -> Iterator[str]:
    """``body`` at an http:// URL on 127.0.0.1, where a JWKS is published for JWT libraries."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_jwks_printed_by_the_cli_verifies_the_clusters_tokens_in_pyjwt(tmp_path: Path) -> None:
    with served(tmp_path) as env:
        created = json.loads(ok(env, "auth", "user", "add", "alice", "--scope", "admin", "--json"))
        token = ok(env, "auth", "token", "alice", f"--secret={created['secret']}").strip()
        printed = ok(env, "auth", "jwks")
        assert json.loads(ok(env, "auth", "jwks", "--json")) == json.loads(printed)

    key_set = json.loads(printed)
    assert [(k["kty"], k["crv"], k["alg"]) for k in key_set["keys"]] == [("OKP", "Ed25519", "EdDSA")]
    with http_serving(printed.encode()) as url:
        client = jwt.PyJWKClient(url)
        signing_key = client.get_signing_key_from_jwt(token)  # found by the token's kid
        claims = jwt.decode(token, signing_key.key, algorithms=["EdDSA"])
        stranger = issue_token(Authority.generate().signing_key, Account("alice", "user", "", ()), ttl=60)
        with pytest.raises(jwt.PyJWKClientError):  # no key of ours has the stranger's kid
            client.get_signing_key_from_jwt(stranger)
    assert (claims["sub"], claims["scopes"]) == ("alice", ["admin"])
    assert jwt.decode(token, jwt.PyJWKSet.from_dict(key_set)[signing_key.key_id], algorithms=["EdDSA"])


def test_a_refused_cli_publish_is_an_error_and_reaches_nobody(tmp_path: Path) -> None:
    with served(tmp_path) as env:
        # The store the node made holds account hashes: owner-only, as key files are.
        store = tmp_path / "store"
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in (store, store / "data.mdb", store / "lock.mdb")
        }
        assert modes == {"store": 0o700, "data.mdb": 0o600, "lock.mdb": 0o600}

        created = json.loads(ok(env, "auth", "user", "add", "alice", "--scope", "admin", "--json"))
        token = ok(env, "auth", "token", "alice", f"--secret={created['secret']}").strip()
        for rule, scope, resource in (
            ("orders-sub", "*", "topic:orders.*:subscribe"),
            ("orders-pub", "admin", "topic:orders.*:publish"),
        ):
            ok(env, "auth", "rules", "create", rule, "--scope", scope, "--resource", resource)
        ok(env, "auth", "rules", "delete", "default")

        subscriber = subprocess.Popen(
            [*trimicro(), "subscribe", "orders.*", "--count", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert subscriber.stderr is not None
            assert subscriber.stderr.readline().startswith("# subscribed to orders.*")
            refused = cli(env, "publish", "orders.created", '{"id": 1}')  # as the CLI's node: no admin
            assert (refused.returncode, refused.stdout) == (1, "")
            # (after the warning the CLI's node logs: who was denied what)
            assert refused.stderr.splitlines()[-1].startswith("error 403 Forbidden: forbidden"), (
                refused.stderr
            )
            allowed = ok(env, "publish", "orders.created", '{"id": 2}', "--token", token)
            assert allowed == "published on orders.created: 1 deliveries\n"
            out, _ = subscriber.communicate(timeout=30)
        finally:
            if subscriber.poll() is None:
                subscriber.kill()
                subscriber.communicate()
    assert [json.loads(line)["body"] for line in out.splitlines()] == [{"id": 2}]  # never the refused one


def test_a_cluster_run_with_an_audience_takes_the_clis_admin_tokens_only_when_they_name_it(
    tmp_path: Path,
) -> None:
    with served(tmp_path, "--audience", "prod") as env:
        refused = cli(env, "auth", "user", "list")  # admin token without 'aud'
        assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
        created = json.loads(
            ok(env, "--audience", "prod", "auth", "user", "add", "alice", "--scope", "admin", "--json")
        )
        assert "alice" in ok(dict(env, TRIMICRO_AUDIENCE="prod"), "auth", "user", "list")
        token = ok(env, "--audience", "prod", "auth", "token", "alice", f"--secret={created['secret']}")
        key_set = jwt.PyJWKSet.from_dict(json.loads(ok(env, "--audience", "prod", "auth", "jwks")))
    key = key_set[jwt.get_unverified_header(token.strip())["kid"]]
    assert jwt.decode(token.strip(), key, algorithms=["EdDSA"], audience="prod")["aud"] == "prod"
