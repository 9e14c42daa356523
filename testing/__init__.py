"""Test helpers for trimicro and for those who write plugins for it.

:mod:`trimicro.testing.conformance` holds one reusable pytest suite per pluggable interface: a
plugin's own tests subclass it, override one fixture, and learn whether their implementation
keeps the interface's promises (Go Micro's semantics, as trimicro states them).

This package imports pytest (and pytest-trio must be installed to run the suites): install
trimicro with its ``test`` extra (``pip install 'trimicro[test]'``) in the environment that runs
your tests. Nothing in trimicro's runtime imports this package, so users who do not run the
suites never need pytest.
"""
