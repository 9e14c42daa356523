"""Conformance suites: one pytest class per interface, for any implementation of it.

Subclass a suite in your tests (a class whose name starts with ``Test``), override the fixture
its docstring names, and run pytest: every check of the suite runs against your implementation::

    # tests/test_conformance.py
    import pytest
    from trimicro.testing.conformance import RegistryConformance

    class TestMyRegistry(RegistryConformance):
        @pytest.fixture
        async def registry(self):
            async with MyRegistry(...) as registry:
                yield registry

The suites are trio tests (each class carries ``pytest.mark.trio``, so ``trio_mode`` is not
needed) and need pytest and pytest-trio: trimicro's ``test`` extra. A check failing is a
broken promise of the interface, stated in that check's docstring; each class docstring states
the contract of its fixtures and the knobs (class attributes) an implementation may set.

* :class:`RegistryConformance`: register, deregister, TTL expiry, watch events and their order.
* :class:`StoreConformance`: Go Micro's read options (prefix, suffix, limit, offset), write
  options (TTL, expiry), delete, list options, tables and databases.
* :class:`BrokerConformance`: fan-out, queue groups, wildcards, acknowledged redelivery and
  dead letters (written against the cluster's pub/sub API).
"""

import pytest

# Before the suites are imported: a failed ``assert`` in them then shows its values, as in a
# test module (pytest rewrites only test modules, conftest files and registered modules).
pytest.register_assert_rewrite(*(f"{__name__}.{suite}" for suite in ("broker", "registry", "store")))

from .broker import BrokerConformance  # noqa: E402
from .registry import RegistryConformance  # noqa: E402
from .store import ManualClock, StoreConformance, WallClock  # noqa: E402

__all__ = ["BrokerConformance", "ManualClock", "RegistryConformance", "StoreConformance", "WallClock"]
