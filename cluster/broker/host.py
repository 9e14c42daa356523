"""What the broker needs of the node it runs on, as Protocols: the broker imports neither the
wiring (:class:`trimicro.cluster.Cluster`, which passes itself as the :class:`Host`) nor its
siblings auth and membership, whose parts it uses through the small views here."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from trimicro.actors import Node
from trimicro.actors.lowlevel import LinkPort

__all__ = ["Host", "MemberEventView", "MembershipView", "TopicGuard"]


class TopicGuard(Protocol):
    """What the broker needs of the node's auth guard (``cluster.auth``, an
    :class:`~trimicro.cluster.auth.AuthGuard`): the rules on topics, for inbound messages
    (:meth:`admit_topic`), acknowledged deliveries (:meth:`check_topic`) and the sender-side
    check of a publish (:meth:`admit_sent_topic`); each raises the 401/403 it refuses with."""

    @property
    def version(self) -> int:
        """The version of the rules in force (0: none fetched or given yet)."""
        ...

    @property
    def on_apply(self) -> list[Callable[[], None]]:
        """Called whenever the rules change (the broker forgets its routes)."""
        ...

    def admit_topic(
        self, link: LinkPort, headers: Mapping[str, str] | None, topic: str, action: str
    ) -> object: ...

    def check_topic(self, account: Any, topic: str, action: str) -> None: ...

    def admit_sent_topic(self, authorization: str | None, topic: str, action: str) -> object: ...


class MemberView(Protocol):
    @property
    def id(self) -> str: ...


class MemberEventView(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def member(self) -> MemberView: ...


class SwimView(Protocol):
    def alive_members(self) -> Iterable[MemberView]: ...


class MembershipView(Protocol):
    @property
    def swim(self) -> SwimView: ...

    @property
    def listeners(self) -> list[Callable[[Any], None]]:
        """Called with every membership event (a ``MemberEvent``: ``kind``, ``member.id``)."""
        ...


class Host(Protocol):
    """What the broker needs of the cluster node it runs on. The wiring
    (:class:`trimicro.cluster.Cluster`) passes itself to :class:`PubSub`; the broker imports
    neither it nor auth nor membership, whose parts it uses through the Protocols here."""

    @property
    def node(self) -> Node: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def auth(self) -> TopicGuard | None: ...

    @property
    def auth_sync(self) -> object | None:
        """What keeps :attr:`auth` current, if anything (else the broker fetches the rules once)."""
        ...

    @property
    def membership(self) -> MembershipView | None: ...

    async def fetch_auth_state(self, *, timeout: float) -> None:
        """Fetch the cluster's rules and revocations into :attr:`auth` now."""
        ...
