"""Network faults between the nodes of an :class:`~trimicro.testing.InprocCluster`.

Each node of the kit's cluster dials through its own :class:`NodeTransport`, a view of the
shared in-process transport that knows who is dialling. :class:`Partitions` holds the cuts: a
cut closes the connections between the two nodes (as a crashed process or a pulled cable
would, seen from the other side) and refuses new dials between them until it is healed. The
others then see the node ``suspect`` and ``dead`` through membership, calls fail over, and
watches report ``"node unreachable"``: the failure paths, tested in one trio run.
"""

from __future__ import annotations

from typing import Any

from trimicro.mailbox.transport import TransportError
from trimicro.mailbox.transport.inproc import InprocConnection, InprocListener, InprocTransport

__all__ = ["NodeTransport", "Partitions"]


class Partitions:
    """Which pairs of nodes cannot reach each other, and the connections to close on a cut."""

    def __init__(self) -> None:
        self._cut: set[frozenset[str]] = set()
        self._open: dict[frozenset[str], list[InprocConnection]] = {}

    def blocked(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are cut off from each other."""
        return frozenset((a, b)) in self._cut

    async def cut(self, a: str, b: str) -> None:
        """Cut ``a`` from ``b`` (both ways): their connections close, new dials are refused."""
        pair = frozenset((a, b))
        self._cut.add(pair)
        for conn in self._open.pop(pair, []):
            await conn.aclose()

    def heal(self) -> None:
        """Remove every cut (connections come back as the nodes dial again)."""
        self._cut.clear()

    def opened(self, a: str, b: str, conn: InprocConnection) -> None:
        # The latest few per pair: a pair has one link at a time, and redials after each loss.
        pair = frozenset((a, b))
        self._open[pair] = [*self._open.get(pair, [])[-7:], conn]


class NodeTransport:
    """The shared :class:`InprocTransport` as node ``node_id`` sees it, with the cuts applied."""

    def __init__(self, shared: InprocTransport, node_id: str, partitions: Partitions) -> None:
        self.shared = shared
        self.node_id = node_id
        self.partitions = partitions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)  # max_frame_size and the like

    async def listen(self, address: str) -> InprocListener:
        return await self.shared.listen(address)

    async def dial(self, address: str, timeout: float = 10.0) -> InprocConnection:
        if self.partitions.blocked(self.node_id, address):
            raise TransportError(
                f"connection refused: {self.node_id} is cut off from {address} (a test's fault)"
            )
        conn = await self.shared.dial(address, timeout)
        self.partitions.opened(self.node_id, address, conn)
        return conn
