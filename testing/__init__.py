"""Test helpers for trimicro applications, and for those who write plugins for it.

- Fixtures for pytest (off unless turned on: :mod:`trimicro.testing.plugin`): a node, a whole
  in-process cluster; with pytest-trio's ``autojump_clock`` their timers run in virtual time.
- :func:`unit`: one actor in isolation, its collaborators replaced by :class:`FakeRef`\\ s, driven
  through an :class:`ActorHarness` (handlers by endpoint name, tells that wait for the handler,
  what it published, its timers run by advancing the clock).
- :func:`open_cluster`: several nodes in one trio run (:class:`InprocCluster`).
- Probes that wait with a deadline and report what they saw (:mod:`.probes`): messages
  (:class:`MessageProbe`), dead letters, a Terminated, membership changes.
- :mod:`trimicro.testing.conformance`: one reusable pytest suite per pluggable interface: a
  plugin's own tests subclass it, override one fixture, and learn whether their implementation
  keeps the interface's promises.

This package imports pytest and trio's testing module: install trimicro with its ``test``
extra (``pip install 'trimicro[test]'``) in the environment that runs your tests. Nothing in
trimicro's runtime imports this package, so users who do not test never need pytest. The
guide is docs/guides/testing.md.
"""

from .cluster import InprocCluster, Serve, open_cluster
from .harness import ActorHarness, FakeCluster, FakeRef, Published, Received, ServiceCall, unit
from .probes import (
    DEFAULT_TIMEOUT,
    Delivery,
    MessageProbe,
    ProbeTimeout,
    Recorder,
    dead_letters,
    terminations,
    wait_converged,
    wait_member,
    wait_terminated,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ActorHarness",
    "Delivery",
    "FakeCluster",
    "FakeRef",
    "InprocCluster",
    "MessageProbe",
    "ProbeTimeout",
    "Published",
    "Received",
    "Recorder",
    "Serve",
    "ServiceCall",
    "dead_letters",
    "open_cluster",
    "terminations",
    "unit",
    "wait_converged",
    "wait_member",
    "wait_terminated",
]
