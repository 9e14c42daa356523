"""trimicro's pytest plugin, registered by entry point and off unless a project turns it on.

Installing trimicro with its ``test`` extra registers this module with pytest in every project
of the environment. It adds only an option and an ini key; the fixtures
(:mod:`trimicro.testing.fixtures`) are added when one of these asks for them:

- ``pytest --trimicro`` (one run);
- ``trimicro = true`` under ``[tool.pytest.ini_options]`` (a project's own tests);
- ``-p trimicro.testing.fixtures`` (loads the fixtures directly, without this plugin).

Off by default because an entry-point plugin loads into every pytest run of the environment:
fixtures named ``trimicro_*`` would appear in projects that never asked for them (and shadow
theirs), and importing the runtime would slow every run down.
"""

from __future__ import annotations

import pytest

FIXTURES = "trimicro.testing.fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trimicro",
        action="store_true",
        default=False,
        help="add trimicro's fixtures (trimicro_node, trimicro_cluster, trimicro_unit)",
    )
    parser.addini("trimicro", type="bool", default=False, help="add trimicro's fixtures (as --trimicro)")


def enabled(config: pytest.Config) -> bool:
    """Whether the project or the command line turned the fixtures on."""
    return bool(config.getoption("trimicro") or config.getini("trimicro"))


def pytest_configure(config: pytest.Config) -> None:
    if enabled(config) and not config.pluginmanager.has_plugin(FIXTURES):
        from . import fixtures

        config.pluginmanager.register(fixtures, FIXTURES)
