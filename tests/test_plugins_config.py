"""Plugins chosen in a config file: the ``[plugins]`` table of ``--config FILE`` /
``start_cluster(config_file=...)`` / ``$TRIMICRO_CONFIG``, below the code, the CLI's flags and the
environment, above the defaults; and the errors a wrong file gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trimicro.cluster import plugins
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.store import MemoryStore

KINDS = ("registry", "broker", "store", "auth", "transport", "codec")


@pytest.fixture(autouse=True)
def no_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables these tests set one by one start unset, whatever the caller's shell has."""
    for kind in (*KINDS, "config"):
        monkeypatch.delenv(f"TRIMICRO_{kind.upper()}", raising=False)


def write_toml(path: Path, plugins_table: str) -> Path:
    path.write_text('[app]\nname = "shop"\n\n[plugins]\n' + plugins_table)
    return path


def test_precedence_argument_then_environment_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(tmp_path / "trimicro.toml", 'registry = "memory://from-file"\n')
    assert plugins.configured("registry", None, "mdns://") == "mdns://"  # no file: the default
    assert plugins.configured("registry", None, "mdns://", config_file=config) == "memory://from-file"
    monkeypatch.setenv("TRIMICRO_REGISTRY", "memory://from-env")
    assert plugins.configured("registry", None, "mdns://", config_file=config) == "memory://from-env"
    assert plugins.configured("registry", "static://given", config_file=config) == "static://given"
    # A group the file does not name falls through to the default.
    assert plugins.configured("broker", None, "cluster://", config_file=config) == "cluster://"


def test_trimicro_config_names_the_file_and_an_explicit_file_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = write_toml(tmp_path / "env.toml", 'store = "memory://env-file"\n')
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"plugins": {"store": "memory://given-file", "codec": ["json", "msgpack"]}}))
    monkeypatch.setenv("TRIMICRO_CONFIG", str(from_env))
    assert plugins.configured("store") == "memory://env-file"
    assert plugins.configured("store", config_file=given) == "memory://given-file"
    assert plugins.configured("codec", config_file=given) == "json,msgpack"  # a list of codecs
    assert plugins.configured("store", config_file=f"file://{given}") == "memory://given-file"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('registy = "memory://"\n', r"unknown key\(s\) registy; known: auth, broker, codec, registry"),
        ('registry = "consul://10.0.0.1"\n', r"\[plugins\] registry: no trimicro.registry plugin .*mdns://"),
        ("registry = 7\n", r"\[plugins\] registry: a URL \(a non-empty string\), not 7"),
        (
            'codec = "msgpack,protobuf"\n',
            r"\[plugins\] codec: no trimicro.codec plugin for scheme 'protobuf'",
        ),
    ],
)
def test_a_wrong_file_is_a_clear_error_naming_file_and_key(tmp_path: Path, table: str, message: str) -> None:
    config = write_toml(tmp_path / "bad.toml", table)
    kind = "codec" if "codec" in table else "registry"
    with pytest.raises(plugins.PluginError, match=message) as caught:
        plugins.configured(kind, config_file=config)
    assert str(config) in caught.value.detail


def test_a_missing_or_unparsable_file_is_a_plugin_error(tmp_path: Path) -> None:
    with pytest.raises(plugins.PluginError, match="file not found"):
        plugins.configured("registry", config_file=tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[plugins\n")
    with pytest.raises(plugins.PluginError, match="invalid TOML"):
        plugins.configured("registry", config_file=broken)
    with pytest.raises(plugins.PluginError, match="cannot tell the format"):
        plugins.configured("registry", config_file=tmp_path / "trimicro.ini")
    not_a_table = tmp_path / "flat.toml"
    not_a_table.write_text('plugins = "memory://"\n')
    with pytest.raises(plugins.PluginError, match=r"\[plugins\] is not a table"):
        plugins.configured("registry", config_file=not_a_table)


def test_a_value_the_environment_overrides_is_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong URL in the file is reported when it is used, so the environment can step over it."""
    config = write_toml(tmp_path / "t.toml", 'registry = "consul://x"\nstore = "memory://ok"\n')
    monkeypatch.setenv("TRIMICRO_REGISTRY", "memory://")
    assert plugins.configured("registry", config_file=config) == "memory://"
    assert plugins.configured("store", config_file=config) == "memory://ok"


async def test_start_cluster_takes_its_plugins_from_the_config_file(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "trimicro.toml",
        'registry = "memory://file-registry"\nstore = "memory://file-store"\ncodec = "json"\n',
    )
    async with start_cluster("from-file", home=tmp_path, membership=False, config_file=config) as c:
        assert c.registry is plugins.load("registry", "memory://file-registry")
        assert isinstance(c.store, MemoryStore)
        assert c.node.codecs.default_codec.content_type == "application/json"
    async with start_cluster(
        "told", registry="memory://told", store="", home=tmp_path, membership=False, config_file=config
    ) as c:  # what the code passes wins over the file ("" too: no store)
        assert c.registry is plugins.load("registry", "memory://told") and c.store is None


def test_the_cli_reads_config_below_its_flags_and_the_environment(tmp_path: Path) -> None:
    """One subprocess per step, each told apart by an unknown scheme that only its source names."""
    config = write_toml(tmp_path / "trimicro.toml", 'registry = "consul://from-file"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMICRO_")}
    env["TRIMICRO_HOME"] = str(tmp_path / "home")

    def cli(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trimicro.cluster.cli", *argv],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listing = ("services", "--wait", "0")
    used_file = cli("--config", str(config), *listing)
    assert used_file.returncode == 2
    assert f"config file {config}: [plugins] registry: no trimicro.registry plugin for scheme 'consul'" in (
        used_file.stderr
    )
    assert "mdns://" in used_file.stderr and "Traceback" not in used_file.stderr
    # $TRIMICRO_CONFIG names the same file; --config after the subcommand works as well.
    assert "'consul'" in cli(*listing, TRIMICRO_CONFIG=str(config)).stderr
    assert "'consul'" in cli(*listing, "--config", str(config)).stderr
    # The environment wins over the file, and a flag over the environment.
    env_wins = cli("--config", str(config), *listing, TRIMICRO_REGISTRY="memory://")
    assert env_wins.returncode == 0, env_wins.stderr
    assert env_wins.stdout.split() == ["SERVICE", "VERSION", "NODES"]
    flag_wins = cli(
        "--config", str(config), "--registry", "memory://", *listing, TRIMICRO_REGISTRY="etcd://x"
    )
    assert flag_wins.returncode == 0, flag_wins.stderr
