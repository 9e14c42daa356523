"""The session's nats-server (:class:`trimicro.testing.nats.NatsServer`): tests never use a
server they did not start (the machine may run one on 4222, with state of its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trimicro.testing.nats import NatsServer

__all__ = ["NatsServer", "nats_server"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A JetStream server for the whole session (tests use names of their own in it)."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
