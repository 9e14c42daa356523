"""MkDocs hook: link the package's folders under the names it installs as, for the API reference.

trimicro is laid out as ``mailbox/ actors/ cluster/ testing/`` and installed as ``trimicro.*``
through setuptools' ``package-dir`` (an editable install uses a custom finder that static
analysers do not follow). mkdocstrings reads source, not imports, so this hook builds
``build/docs-src/trimicro/<layer> -> <layer>/`` before the build (the same idea as the link tree
``.ci/run`` builds for mypy): ``mkdocs build`` works on a clean clone with no install step.

The ``mkdocs`` console script runs with its own folder first on ``sys.path``, and that folder
holds the ``trimicro`` console script: griffe would take that file for a part of the
``trimicro`` namespace package and find no ``trimicro.actors``. The hook drops such entries
(``python -m mkdocs`` never has one). The hook runs first (priority 100): mkdocstrings builds
its handler, search path included, in its own ``on_config``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

LAYERS = ("mailbox", "actors", "cluster", "testing")


@event_priority(100)
def on_config(config: Any) -> Any:
    root = Path(config["config_file_path"]).resolve().parent
    tree = root / "build" / "docs-src" / "trimicro"
    tree.mkdir(parents=True, exist_ok=True)
    for layer in LAYERS:
        link, target = tree / layer, root / layer
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()  # a tree left by a checkout that has moved
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    sys.path[:] = [entry for entry in sys.path if not (Path(entry or ".") / "trimicro").is_file()]
    return config
