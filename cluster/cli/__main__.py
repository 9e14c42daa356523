"""``python -m trimicro.cluster.cli``: the ``trimicro`` command."""

from . import console

console()
