"""The gateway serves a service whose reply class it has never seen, across real processes.

A service process answers an attrs ``Balance`` registered only there; the gateway process
(``trimicro api``) knows nothing of it, yet the HTTP client gets the JSON object with its
fields, nested values included: the gateway's node decodes unknown types as maps. The
command's flags reach the gateway (``--subscriber-policy``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import msgpack
import trio
from procs import python_process

PEER = str(Path(__file__).resolve().parent / "gateway_typed_peer.py")


async def test_a_typed_reply_from_another_process_arrives_as_a_json_object(tmp_path: Path) -> None:
    stype = f"_t{uuid.uuid4().hex[:10]}._tcp.local."
    service = f"ledger-{uuid.uuid4().hex[:6]}"
    api = ["-m", "trimicro.cluster.cli", "--home", str(tmp_path), "api", "--address", "127.0.0.1:0"]
    api += ["--subscriber-policy", "block"]
    async with (
        python_process(PEER, str(tmp_path), stype, service) as peer,
        python_process(*api, "--registry", f"mdns://?type={stype}") as gateway,
    ):
        with trio.fail_after(60):
            assert (await peer.line()).startswith("ready "), "service process"
            line = await gateway.line()
        assert line.startswith("gateway "), line
        url = line.split(" at ", 1)[1].split()[0]
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            with trio.fail_after(60):
                while True:  # until the gateway's registry view has the service (no sync point)
                    r = await http.post(f"/api/{service}/balance", json={"account": "ada"})
                    if r.status_code != 404:
                        break
                    await trio.sleep(0.1)
            assert r.status_code == 200, r.text
            assert r.json() == {
                "account": "ada",
                "cents": 750,
                "entries": [{"memo": "opening", "cents": 1000}, {"memo": "coffee", "cents": -250}],
            }
            packed = await http.post(
                f"/api/{service}/balance", json={"account": "bo"}, headers={"accept": "application/msgpack"}
            )
            assert packed.status_code == 200
            assert packed.headers["content-type"].startswith("application/msgpack")
            assert msgpack.unpackb(packed.content)["account"] == "bo"
            # --subscriber-policy block: this gateway lets a client ask to hold publishers back
            # (one started without it refuses that with a 400, tests/test_gateway.py).
            async with http.stream("GET", "/api/subscribe/ledger.>?policy=block") as sub:
                assert sub.status_code == 200, await sub.aread()
