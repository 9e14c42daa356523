"""Node bundles and joined homes: how a host without the authority key gets a node identity."""

from __future__ import annotations

import base64
import io
import json
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from trimicro.cluster.cli import main
from trimicro.mailbox.errors import Conflict
from trimicro.mailbox.secure.bundle import (
    BundleError,
    init_authority,
    install_bundle,
    issue_bundle,
    read_bundle,
)
from trimicro.mailbox.secure.identity import Authority, IdentityError, dev_authority, dev_identity


def test_an_installed_bundle_is_the_node_identity_of_a_joined_home(tmp_path: Path) -> None:
    authority = init_authority(tmp_path / "a")
    home = tmp_path / "b"
    installed = install_bundle(home, issue_bundle(authority, "b1", roles=["web"]))
    identity = dev_identity("b1", home)
    assert identity.public_key == installed.public_key
    assert identity.trusted == {authority.public_key}
    assert identity.cert.roles == ("web",)
    # The joined home never gets an authority of its own, nor an identity nobody issued.
    with pytest.raises(IdentityError, match="authority is on another host"):
        dev_authority(home)
    with pytest.raises(IdentityError, match="no certificate for node 'b2'"):
        dev_identity("b2", home)
    assert not (home / "authority.key").exists()
    for path in [home, *home.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_init_refuses_to_replace_an_authority(tmp_path: Path) -> None:
    init_authority(tmp_path)
    with pytest.raises(Conflict):
        init_authority(tmp_path)


def test_a_forged_or_mismatched_bundle_is_refused(tmp_path: Path) -> None:
    authority, other = Authority.generate(), Authority.generate()
    document = json.loads(issue_bundle(authority, "b1"))
    forged = dict(document, authorities=[base64.b64encode(other.public_key).decode()])
    with pytest.raises(BundleError, match="foreign authority"):
        read_bundle(json.dumps(forged).encode())
    with pytest.raises(BundleError, match="certificate is for 'b1'"):
        read_bundle(json.dumps(dict(document, node_id="b2")).encode())
    swapped = json.loads(issue_bundle(authority, "b1"))["key"]
    with pytest.raises(BundleError, match="for another key"):
        read_bundle(json.dumps(dict(document, key=swapped)).encode())
    with pytest.raises(BundleError, match="not a node bundle"):
        read_bundle(b"{}")
    with pytest.raises(Conflict, match="authority of its own"):
        install_bundle(tmp_path / "a", issue_bundle(init_authority(tmp_path / "a"), "b1"))


def test_the_cli_procedure(tmp_path: Path) -> None:
    """authority init, cert issue, cert install, cert show: files only, no node started."""

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(list(argv), out=out, err=out), out.getvalue()

    a, b, bundle = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "n.json")
    # No certificate before the explicit init: issuing never makes an authority on the side.
    code, text = run("--home", a, "cert", "issue", "b1", "--out", bundle)
    assert code == 2 and "authority init" in text and not (tmp_path / "a" / "authority.key").exists()
    code, text = run("--home", a, "authority", "init")
    assert code == 0 and "cluster " in text
    fingerprint = text.split("cluster ")[1].split()[0]
    assert run("--home", a, "authority", "init")[0] == 1
    assert run("--home", a, "cert", "issue", "b1", "--out", bundle, "--role", "web")[0] == 0
    assert stat.S_IMODE(Path(bundle).stat().st_mode) == 0o600
    assert run("--home", a, "cert", "issue", "b1", "--out", bundle)[0] == 1  # never overwritten
    assert run("--home", b, "cert", "install", bundle)[0] == 0
    code, text = run("--home", b, "cert", "show", "b1", "--json")
    assert code == 0
    (shown,) = json.loads(text)
    assert shown["node_id"] == "b1" and shown["roles"] == ["web"] and shown["cluster"] == fingerprint
    assert shown["valid"] is True
    assert fingerprint in run("--home", b, "authority", "show")[1]


def test_install_never_leaves_the_home_nor_changes_its_trust(tmp_path: Path) -> None:
    authority, stranger = init_authority(tmp_path / "a"), Authority.generate()
    # A certificate the authority did sign, for an id that would be a path out of the home.
    key = SigningKey.generate()
    document = json.loads(issue_bundle(authority, "b1"))
    document.update(
        node_id="../../escaped",
        key=base64.b64encode(bytes(key)).decode(),
        certificate=base64.b64encode(authority.issue("../../escaped", bytes(key.verify_key))).decode(),
    )
    with pytest.raises(BundleError, match="node_id must be"):
        install_bundle(tmp_path / "b", json.dumps(document).encode())
    assert not (tmp_path / "escaped").exists()
    # A home that trusts the cluster's authority refuses a bundle made by anyone else...
    home = tmp_path / "b"
    install_bundle(home, issue_bundle(authority, "b1"))
    with pytest.raises(Conflict, match="does not trust"):
        install_bundle(home, issue_bundle(stranger, "b2"))
    assert dev_identity("b1", home).trusted == {authority.public_key}
    # ...while a renewal from the same authority replaces the node's key and certificate.
    renewed = install_bundle(home, issue_bundle(authority, "b1"))
    assert dev_identity("b1", home).public_key == renewed.public_key
