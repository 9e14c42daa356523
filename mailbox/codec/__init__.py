"""Content-type-keyed codecs: msgpack (the default), CBOR and JSON, each with explicit limits.

As in Go Micro, a message's ``Content-Type`` picks the codec (:class:`CodecSet`). All three carry
the same values: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, lists (tuples arrive
as lists), maps with ``str`` keys, and every value a :class:`TypeRegistry` knows (registered attrs
classes, :class:`ActorRef`, :class:`MicroError`), nested freely.

Decoding is for bytes from the network, so each codec checks a :class:`DecodeLimits` and turns
every failure (malformed bytes, trailing bytes, limits, unknown tags, wrong fields, bad UTF-8)
into :class:`DecodeError`; encoding failures become :class:`EncodeError`. Nothing else escapes.
Codecs hold no per-call state and may be shared between tasks and threads.

This package holds the interface (:class:`Codec`, :class:`CodecSet`, the content types); the
implementations sit beside it (:mod:`.msgpack`, :mod:`.cbor`, :mod:`.json`) and the type registry
in :mod:`.typeregistry`, all re-exported here: ``from trimicro.mailbox.codec import JsonCodec``.

**The interface.** A :class:`Codec` has a ``content_type`` and two methods: ``encode(obj)``
returns bytes or raises :class:`EncodeError`; ``decode(data)`` returns the value or raises
:class:`DecodeError` (400), and nothing else, for any input at all (it reads bytes from the
network), within its :class:`DecodeLimits`. ``decode(encode(v)) == v`` for every value above
(tuples come back as lists). A codec plugin (entry-point group ``trimicro.codec``, its factory
given ``registry=`` a :class:`TypeRegistry` and ``limits=``) must keep these promises and hold
no per-call state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

from trimicro.mailbox.codec.typeregistry import DecodeError, EncodeError, TypeRegistry, default_registry
from trimicro.mailbox.errors import BadRequest
from trimicro.mailbox.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "CBOR",
    "CBOR_TYPE_TAG",
    "JSON",
    "MSGPACK",
    "MSGPACK_EXT_CODE",
    "CborCodec",
    "Codec",
    "CodecSet",
    "DecodeError",
    "EncodeError",
    "JsonCodec",
    "MsgpackCodec",
    "TypeRegistry",
    "UnsupportedContentType",
    "cbor_prescan",
    "default_registry",
]

MSGPACK = "application/msgpack"
CBOR = "application/cbor"
JSON = "application/json"

_E = TypeVar("_E", bound=BaseException)


class Codec(Protocol):
    """What the runtime needs from a codec: a content type and a pair of pure functions."""

    content_type: str

    def encode(self, obj: Any) -> bytes:
        """``obj`` as bytes; :class:`EncodeError` if it has no wire form."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; :class:`DecodeError` (only) for anything else."""
        ...


class UnsupportedContentType(BadRequest):
    """400: no codec for the message's ``Content-Type``."""


def _decode_failure(fmt: str, exc: BaseException) -> DecodeError:
    """The :class:`DecodeError` for an exception a decoder raised (not itself a DecodeError).

    Hooks run inside C decoders, which may wrap what the hook raised: keep our message if so.
    """
    inner = _find_in_chain(exc, DecodeError)
    if inner is not None:
        return DecodeError(inner.detail)
    if isinstance(exc, RecursionError):
        return DecodeError(f"{fmt} input nested too deeply to parse")
    return DecodeError(f"malformed {fmt}: {type(exc).__name__}: {exc}"[:400])


def _encode_failure(fmt: str, exc: BaseException) -> EncodeError:
    """The :class:`EncodeError` for an exception an encoder raised (not itself an EncodeError)."""
    inner = _find_in_chain(exc, EncodeError)
    if inner is not None:
        return EncodeError(inner.detail)
    if isinstance(exc, RecursionError):
        return EncodeError(f"value nested too deeply (or cyclic) for {fmt}")
    return EncodeError(f"cannot encode as {fmt}: {type(exc).__name__}: {exc}"[:400])


def _find_in_chain(exc: BaseException, kind: type[_E]) -> _E | None:
    cause = exc.__cause__ or exc.__context__
    for _ in range(8):
        if cause is None or isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _too_big(n: int, limits: DecodeLimits) -> DecodeError:
    return DecodeError(f"message of {n} bytes exceeds max_size={limits.max_size}")


def _too_deep(limits: DecodeLimits) -> DecodeError:
    return DecodeError(f"nesting deeper than max_depth={limits.max_depth}")


class CodecSet:
    """Codecs by content type, as Go Micro picks them from a message's ``Content-Type``.

    ``get`` ignores parameters and case (``application/json; charset=utf-8``); an empty or
    missing content type means :attr:`default_codec`.
    """

    __slots__ = ("_by_type", "default_codec")

    def __init__(self, codecs: Iterable[Codec], default: str | None = None) -> None:
        self._by_type: dict[str, Codec] = {}
        for codec in codecs:
            if codec.content_type in self._by_type:
                raise ValueError(f"two codecs for {codec.content_type!r}")
            self._by_type[codec.content_type] = codec
        if not self._by_type:
            raise ValueError("a CodecSet needs at least one codec")
        first = next(iter(self._by_type))
        default = first if default is None else default
        if default not in self._by_type:
            raise ValueError(f"default content type {default!r} has no codec")
        self.default_codec: Codec = self._by_type[default]

    @classmethod
    def default(cls, registry: TypeRegistry | None = None, limits: DecodeLimits | None = None) -> CodecSet:
        """msgpack (default), CBOR and JSON sharing one registry and one set of limits."""
        registry = default_registry() if registry is None else registry
        limits = DEFAULT_LIMITS if limits is None else limits
        return cls(
            (
                MsgpackCodec(registry, limits),
                CborCodec(registry, limits),
                JsonCodec(registry, limits),
            ),
            default=MSGPACK,
        )

    def get(self, content_type: str | None = None) -> Codec:
        """The codec for ``content_type``; :class:`UnsupportedContentType` if there is none."""
        if type(content_type) is str:  # the common case first: one lookup (every message asks)
            found = self._by_type.get(content_type)
            if found is not None:
                return found
        if not content_type:
            return self.default_codec
        if not isinstance(content_type, str):
            raise UnsupportedContentType(f"a content type is a string, not {content_type!r:.100}")
        codec = self._by_type.get(content_type)
        if codec is None:
            codec = self._by_type.get(content_type.partition(";")[0].strip().lower())
            if codec is None:
                raise UnsupportedContentType(
                    f"unsupported content type {content_type!r:.100}; supported: {', '.join(self._by_type)}"
                )
        return codec

    def __contains__(self, content_type: object) -> bool:
        return content_type in self._by_type

    def __iter__(self) -> Iterator[Codec]:
        return iter(self._by_type.values())

    @property
    def content_types(self) -> tuple[str, ...]:
        """The content types served, in the order the codecs were given."""
        return tuple(self._by_type)


# The implementations, beside the interface (they import the content types and failure helpers above).
from .cbor import CBOR_TYPE_TAG, CborCodec, cbor_prescan  # noqa: E402
from .json import JsonCodec  # noqa: E402
from .msgpack import MSGPACK_EXT_CODE, MsgpackCodec  # noqa: E402
