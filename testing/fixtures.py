"""The fixtures of trimicro's pytest plugin (turned on as :mod:`trimicro.testing.plugin` says).

- ``trimicro_node``: a started :class:`~trimicro.actors.Node` with no network, stopped after
  the test; its actors' messages are recorded in ``trimicro_probe``.
- ``trimicro_cluster``: an :class:`~trimicro.testing.InprocCluster` with its client node
  started; ``await trimicro_cluster.add_node(services=[...])`` adds nodes; all stop after the test.

Time: request pytest-trio's ``autojump_clock`` in the same test (``async def test_x(
trimicro_cluster, autojump_clock)``) and every timeout, retry, TTL and backoff runs in virtual
time. The fixtures are async (pytest-trio runs them in the test's trio run), so the test must
be a trio test (``trio_mode = true``, or ``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from trimicro.actors import Node, start_node

from .cluster import InprocCluster, open_cluster
from .probes import MessageProbe

__all__ = ["trimicro_cluster", "trimicro_node", "trimicro_probe"]


@pytest.fixture
def trimicro_probe() -> MessageProbe:
    """The :class:`~trimicro.testing.MessageProbe` of ``trimicro_node``."""
    return MessageProbe()


@pytest.fixture
async def trimicro_node(trimicro_probe: MessageProbe) -> AsyncIterator[Node]:
    """A node in the test's trio run, without a listener (no network), stopped after the test."""
    async with start_node("test", middleware=[trimicro_probe]) as node:
        yield node


@pytest.fixture
async def trimicro_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InprocCluster]:
    """An in-process cluster (memory registry, in-process transport) with its client node."""
    async with open_cluster(home=tmp_path_factory.mktemp("trimicro")) as cluster:
        yield cluster
