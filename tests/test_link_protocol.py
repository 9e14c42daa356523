"""The link protocol without I/O (trimicro.actors.remote.protocol): its state table, fuzzed.

Random event sequences never crash the protocol object: each event is either a transition of
the table or raises LinkStateError with the state unchanged; CLOSED, once reached, is kept.
The correlation and credit rules are checked against their definitions (docs/protocol.md §3.3,
§4.5), and the state table in docs/protocol.md §3.8 is the one in the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimicro.actors.remote import MAX_CREDIT
from trimicro.actors.remote.protocol import (
    TRANSITIONS,
    BadCorrelation,
    BadCredit,
    LinkEvent,
    LinkProtocol,
    LinkState,
    LinkStateError,
    check_credit,
)
from trimicro.mailbox.errors import BadRequest, MicroError

events = st.lists(st.sampled_from(list(LinkEvent)), max_size=40)


@given(initiator=st.booleans(), sequence=events)
def test_any_event_sequence_follows_the_table_or_raises_the_typed_error(
    initiator: bool, sequence: list[LinkEvent]
) -> None:
    proto = LinkProtocol(initiator)
    assert proto.state is LinkState.AWAITING_HELLO
    seen_closed = False
    for event in sequence:
        before = proto.state
        expected = TRANSITIONS.get((before, event))
        if expected is None:
            with pytest.raises(LinkStateError) as info:
                proto.handle(event)
            assert proto.state is before  # an illegal event changes nothing
            assert (info.value.state, info.value.event) == (before, event)
            assert isinstance(info.value, MicroError) and info.value.code == 500
        else:
            assert proto.handle(event) is expected is proto.state
        assert proto.closed == (proto.state is LinkState.CLOSED)
        if seen_closed:
            assert proto.state is LinkState.CLOSED  # nothing leaves CLOSED
        seen_closed = proto.closed


def test_the_table_covers_the_life_of_a_link() -> None:
    # Every state but CLOSED accepts frames and a close; only a live link may retire, once.
    for state in LinkState:
        assert (state, LinkEvent.CLOSE) in TRANSITIONS
        assert ((state, LinkEvent.FRAME) in TRANSITIONS) == (state is not LinkState.CLOSED)
    assert {s for (s, e) in TRANSITIONS if e is LinkEvent.RETIRE} == {
        LinkState.AWAITING_HELLO,
        LinkState.OPEN,
    }
    assert all(nxt is LinkState.CLOSED for (s, _), nxt in TRANSITIONS.items() if s is LinkState.CLOSED)
    # Every state is reachable from the first one.
    reached, todo = {LinkState.AWAITING_HELLO}, [LinkState.AWAITING_HELLO]
    while todo:
        state = todo.pop()
        for (s, _), nxt in TRANSITIONS.items():
            if s is state and nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    assert reached == set(LinkState)


@given(initiator=st.booleans(), n=st.integers(1, 200))
def test_own_corrs_are_fresh_with_this_sides_parity(initiator: bool, n: int) -> None:
    proto = LinkProtocol(initiator)
    corrs = [proto.new_corr() for _ in range(n)]
    assert len(set(corrs)) == n and 0 not in corrs
    assert all(c % 2 == (1 if initiator else 0) for c in corrs)


@given(initiator=st.booleans(), corr=st.integers(1, 2**63), live=st.booleans())
def test_the_peer_may_start_exchanges_only_with_its_own_parity_and_a_free_id(
    initiator: bool, corr: int, live: bool
) -> None:
    proto = LinkProtocol(initiator)
    peers_parity = corr % 2 == (0 if initiator else 1)
    if peers_parity and not live:
        proto.check_peer_corr(corr, live)
    else:
        with pytest.raises(BadCorrelation) as info:
            proto.check_peer_corr(corr, live)
        assert isinstance(info.value, BadRequest) and info.value.code == 400
    # The two sides of one link accept each other's ids, never their own.
    other = LinkProtocol(not initiator)
    c = other.new_corr()
    proto.check_peer_corr(c, False)
    with pytest.raises(BadCorrelation):
        other.check_peer_corr(c, False)


@given(st.one_of(st.integers(-5, MAX_CREDIT + 5), st.booleans(), st.floats(), st.text(max_size=3), st.none()))
def test_credit_is_an_integer_from_1_to_2_to_the_20(n: object) -> None:
    if type(n) is int and 1 <= n <= MAX_CREDIT:
        assert check_credit(n) == n
    else:
        with pytest.raises(BadCredit):
            check_credit(n)


def test_the_state_table_in_the_protocol_doc_is_the_codes() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc[doc.index("### 3.8 Link states") :]
    section = section[: section.index("\n## ")]
    rows = re.findall(r"^\| `([a-z-]+)` +\| `([a-z]+)` +\| `([a-z-]+)` +\|", section, re.M)
    documented = {(LinkState(s), LinkEvent(e)): LinkState(n) for s, e, n in rows}
    assert documented == TRANSITIONS
