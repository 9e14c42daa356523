"""Private key files, kept the way ssh keeps them: who may read a node's or an authority's key.

A key is created ``0o600`` inside ``0o700`` directories, written atomically through a temp file
in the same directory (so a crash never leaves half a key), and refused on load if group or
others may access it, or another user owns it. Two processes creating the same key at once
both end up with the first one written. :mod:`.identity` keeps its keys and certificates here;
:mod:`.bundle` writes an installed node's files the same way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from nacl.signing import SigningKey

from trimicro.mailbox.errors import InternalServerError

__all__ = ["IdentityError", "load_key", "load_or_create_key", "write_private"]

_SEED_LEN = 32  # an Ed25519 seed
_POSIX = os.name == "posix"


class IdentityError(InternalServerError):
    """A key or certificate file could not be used: unsafe permissions, wrong size, unreadable."""


def _ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode ``0o700``; leave existing ones."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created concurrently: not ours to chmod
        except OSError as exc:
            raise IdentityError(f"cannot create directory {d}: {exc.strerror or exc}") from exc
        if _POSIX:
            os.chmod(d, 0o700)  # mkdir's mode is filtered through the umask


def write_private(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Write ``data`` to ``path`` atomically, mode ``0o600``, via a temp file in the same directory;
    missing parents are created ``0o700``.

    With ``overwrite=False`` an existing file wins (returns False): two processes creating the
    same key at once both end up using the first one written.
    """
    _ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if _POSIX:
                os.fchmod(fd, 0o600)  # in case the umask took owner bits away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never replaces an existing file
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links
                if path.exists():
                    return False
                os.replace(tmp, path)
        return True
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_key(path: Path) -> SigningKey | None:
    """The key stored at ``path``, or None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot open key file {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"key file {path} is not a regular file")
        if _POSIX:
            if st.st_mode & 0o077:
                raise IdentityError(
                    f"key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 on it"
                )
            if st.st_uid != os.getuid():
                raise IdentityError(f"key file {path} is owned by another user")
        seed = os.read(fd, _SEED_LEN + 1)
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(seed) != _SEED_LEN:
        raise IdentityError(f"key file {path} must hold exactly {_SEED_LEN} bytes")
    return SigningKey(seed)


def load_or_create_key(path: Path) -> SigningKey:
    """The key at ``path``, generated and written there first if there is none."""
    key = load_key(path)
    if key is not None:
        return key
    new = SigningKey.generate()
    if write_private(path, bytes(new), overwrite=False):
        return new
    key = load_key(path)  # another process created it first
    if key is None:
        raise IdentityError(f"key file {path} vanished while being created")
    return key
