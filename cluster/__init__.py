"""Cluster layer: registry, membership, selection, store, identity/auth, config, CLI.

Depends on :mod:`trimicro.actors` and :mod:`trimicro.mailbox`; nothing below imports it.
"""
