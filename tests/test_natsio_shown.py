"""Errors about NATS servers never show the user and password a server URL carries: they reach
health reports, which the gateway serves to anyone."""

from __future__ import annotations

from trimicro.cluster.natsio import _shown


def test_credentials_are_left_out_of_shown_servers() -> None:
    shown = _shown(["nats://alice:s3cret@10.0.0.5:4222", "nats://127.0.0.1:4222", "tls://bob@h:1"])
    assert "s3cret" not in shown and "alice" not in shown and "bob" not in shown
    assert shown == "nats://10.0.0.5:4222, nats://127.0.0.1:4222, tls://h:1"
