"""Explicit bounds for decoding bytes that came from the network.

A decoder that trusts its input can be made to allocate gigabytes from a five-byte header, or to
recurse until the process dies. Every codec takes one :class:`DecodeLimits` and refuses input
that exceeds it with :class:`~trimicro.mailbox.codec.typeregistry.DecodeError` before (or instead of)
doing the expensive thing.
"""

from __future__ import annotations

import attrs

__all__ = ["DEFAULT_LIMITS", "DecodeLimits"]

_MIB = 1024 * 1024

_positive = [attrs.validators.instance_of(int), attrs.validators.ge(1)]


@attrs.frozen(slots=True)
class DecodeLimits:
    """How much one encoded message may ask of the decoder."""

    max_size: int = attrs.field(default=4 * _MIB, validator=_positive)
    """Bytes of one encoded message; checked before parsing, so nothing larger is even looked at."""

    max_depth: int = attrs.field(default=64, validator=_positive)
    """Nesting of arrays/maps: deep input otherwise exhausts the stack of whoever walks it next
    (``repr``, ``==``, re-encoding), long after the decoder returned."""

    max_len: int = attrs.field(default=1_000_000, validator=_positive)
    """Elements of any one array or map (pairs for maps). Never more than the input's byte count
    (see :meth:`len_cap`): a header may claim 2**32 elements in five bytes, and decoders that
    preallocate would believe it."""

    max_str: int = attrs.field(default=4 * _MIB, validator=_positive)
    """Bytes of any one string or byte string (for JSON: characters after unescaping)."""

    def len_cap(self, size: int) -> int:
        """The element bound for an input of ``size`` bytes: every element costs at least a byte."""
        return size if size < self.max_len else self.max_len


#: The limits used when none are given.
DEFAULT_LIMITS = DecodeLimits()
