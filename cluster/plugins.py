"""Plugins by entry point, selected by URL (as SQLAlchemy picks a database dialect).

Go Micro swaps a default by configuration, not by forking: every concern is a small interface,
and a user names the implementation. Here the name is a URL whose scheme picks the
implementation: ``mdns://``, ``memory://``, ``static://10.0.0.1:7000,10.0.0.2:7000``, ``lmdb:///var/lib/app``,
``jsonfile:///tmp/registry.json`` (the example plugin). Each scheme is an entry point in one
of the groups below, installed by whichever distribution provides it; trimicro registers its
own built-ins the same way (its ``pyproject.toml``), so a plugin is not a second-class citizen.

An entry point's name is the scheme and its object a *factory*: ``factory(url, **options)``
returns the implementation, given the parsed :class:`URL` and the caller's keyword options
(``load("trimicro.store", "lmdb:///data", table="auth")``). A value without ``://`` names a bare
scheme (``"mdns"`` is ``"mdns://"``), which keeps the CLI's old ``--registry mdns|memory`` words.

Errors: an unknown scheme is :class:`UnknownScheme` naming the installed schemes; a plugin that
fails to import, two distributions claiming one scheme, or a URL its factory refuses is
:class:`PluginError`. Both carry Go Micro's error fields (400, id ``plugins``) and are also
``ValueError`` s. Implementations are imported lazily, inside the factories: ``trimicro plugins``
and a node using mDNS never import LMDB.

Where a user chooses, first found wins: ``start_cluster(registry=..., store=...)`` (an instance
or a URL; the CLI passes its flags ``trimicro --registry URL --store URL ...`` there), the
environment (``TRIMICRO_REGISTRY``, ``TRIMICRO_STORE``, ...), the ``[plugins]`` table of a config
file (``start_cluster(config_file=...)``, ``trimicro --config FILE``, else ``$TRIMICRO_CONFIG``:
:func:`from_file`), the default (all in :func:`configured`). ``trimicro plugins`` lists what is
installed.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from trimicro.mailbox.errors import BadRequest

__all__ = [
    "GROUPS",
    "URL",
    "PluginError",
    "UnknownScheme",
    "choose",
    "codec_set",
    "configured",
    "from_file",
    "installed",
    "load",
    "parse_url",
    "require",
]

#: Every entry-point group, by the short name the environment and the CLI use.
GROUPS: Mapping[str, str] = {
    "registry": "trimicro.registry",
    "broker": "trimicro.broker",
    "store": "trimicro.store",
    "config": "trimicro.config",
    "codec": "trimicro.codec",
    "transport": "trimicro.transport",
    "auth": "trimicro.auth",
}

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
#: A URL longer than this is refused before parsing (it comes from flags and the environment).
MAX_URL = 4096


class PluginError(BadRequest, ValueError):
    """A plugin could not be chosen or built: a bad URL, a broken or ambiguous plugin."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, id="plugins")


class UnknownScheme(PluginError):
    """No installed distribution provides this scheme in this group."""

    def __init__(self, group: str, scheme: str, known: list[str]) -> None:
        names = ", ".join(f"{s}://" for s in known) or "none"
        super().__init__(f"no {group} plugin for scheme {scheme!r}; installed: {names}")
        self.group = group
        self.scheme = scheme
        self.known = known


@attrs.frozen
class URL:
    """A parsed plugin URL: ``scheme://host/path?key=value``.

    ``host`` is the part after ``//`` up to the next ``/`` (it may hold a comma-separated list,
    as ``static://`` seeds do); ``path`` the rest before ``?``; ``params`` the query (the last
    value of a repeated key wins). :attr:`location` is ``host + path``: a file path as
    ``lmdb:///abs/dir`` (absolute) or ``lmdb://rel/dir`` (relative) write it.
    """

    text: str
    scheme: str
    host: str = ""
    path: str = ""
    params: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def location(self) -> str:
        return self.host + self.path

    def file_path(self) -> Path:
        """:attr:`location` as a path (``~`` expanded); :class:`PluginError` if there is none."""
        if not self.location:
            raise PluginError(f"{self.text}: needs a path, e.g. {self.scheme}:///path/to/it")
        return Path(self.location).expanduser()


def parse_url(text: str) -> URL:
    """Parse ``text``; a bare word (no ``://``) is a scheme with nothing after it."""
    if not isinstance(text, str) or not text:
        raise PluginError(f"a plugin URL must be a non-empty string, not {text!r}")
    if len(text) > MAX_URL:
        raise PluginError(f"a plugin URL is longer than {MAX_URL} characters")
    if "://" not in text:
        if not _SCHEME.match(text):
            raise PluginError(f"{text!r} is not a URL (scheme://...) nor a scheme name")
        return URL(text, text.lower())
    scheme, rest = text.split("://", 1)
    if not _SCHEME.match(scheme):
        raise PluginError(f"{text!r}: {scheme!r} is not a URL scheme")
    parts = urlsplit("x://" + rest)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return URL(text, scheme.lower(), unquote(parts.netloc), unquote(parts.path), params)


def _group(group: str) -> str:
    full = GROUPS.get(group, group)
    if full not in GROUPS.values():
        raise PluginError(f"no plugin group {group!r}; groups: {', '.join(GROUPS.values())}")
    return full


def _entries(group: str) -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name.lower(), []).append(ep)
    return found


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def installed(group: str) -> dict[str, str]:
    """``{scheme: distribution}`` of every plugin installed in ``group`` (short or full name)."""
    return {
        scheme: ", ".join(sorted({_dist_name(ep) for ep in eps}))
        for scheme, eps in sorted(_entries(_group(group)).items())
    }


def load(group: str, url: str, **options: Any) -> Any:
    """The implementation ``url`` names in ``group`` (``"registry"`` or ``"trimicro.registry"``)."""
    full = _group(group)
    parsed = parse_url(url)
    entries = _entries(full)
    eps = entries.get(parsed.scheme)
    if not eps:
        raise UnknownScheme(full, parsed.scheme, sorted(entries))
    if len({_dist_name(ep) for ep in eps}) > 1:
        dists = ", ".join(sorted({_dist_name(ep) for ep in eps}))
        raise PluginError(
            f"scheme {parsed.scheme}:// of {full} is provided by several distributions: {dists}"
        )
    ep = eps[0]
    try:
        factory = ep.load()
    except Exception as exc:  # whatever a broken plugin raises on import
        raise PluginError(
            f"{full} plugin {parsed.scheme}:// ({ep.value}, from {_dist_name(ep)}) failed to load: {exc}"
        ) from exc
    try:
        return factory(parsed, **options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PluginError):
            raise
        raise PluginError(f"{full} {url}: {exc}") from exc


def require(group: str, url: str) -> str:
    """``url`` if ``group`` has a plugin for its scheme, else :class:`UnknownScheme`: checked
    before a node starts when the factory needs the node itself (a broker, an auth)."""
    full = _group(group)
    scheme = parse_url(url).scheme
    known = sorted(_entries(full))
    if scheme not in known:
        raise UnknownScheme(full, scheme, known)
    return url


#: The keys of a config file's ``[plugins]`` table: the groups a user picks one plugin of.
FILE_KEYS = ("auth", "broker", "codec", "registry", "store", "transport")

#: A config file: a path or a ``file://`` URL (JSON, TOML or YAML by its suffix, as the config
#: package's ``FileSource`` reads it).
ConfigFile = str | os.PathLike[str]


def from_file(path: ConfigFile | None = None, *, only: str | None = None) -> dict[str, str]:
    """The ``[plugins]`` table of the config file ``path`` (else ``$TRIMICRO_CONFIG``; neither:
    ``{}``), each URL checked against the installed plugins (with ``only``, that key's alone: a
    user may override a value the file gets wrong, as the environment and flags do).

    ``[plugins]`` maps a group (:data:`FILE_KEYS`) to a URL (``codec`` also to a list of
    names); the rest of the file is the application's. An unreadable file, an unknown key, a
    value of the wrong type or a scheme nobody provides is a :class:`PluginError` naming the
    file, the key and, for a scheme, what is installed.
    """
    chosen = path if path is not None and str(path) else os.environ.get("TRIMICRO_CONFIG") or None
    if chosen is None:
        return {}
    from .config.sources import FileSource

    text = str(chosen)
    if "://" in text:
        source = load("config", text)
        if not isinstance(source, FileSource):
            raise PluginError(f"config file {text}: not a file (a file:// URL or a path)")
    else:
        try:
            source = FileSource(Path(text).expanduser())
        except BadRequest as exc:
            raise PluginError(exc.detail) from None
    try:
        tree = source.read()
    except BadRequest as exc:
        raise PluginError(f"config file {exc.detail}") from None
    except Exception as exc:  # NotFound and the like: a file the user named must be there
        raise PluginError(f"config file {source.path}: {getattr(exc, 'detail', exc)}") from None
    table = tree.get("plugins", {})
    where = f"config file {source.path}: [plugins]"
    if not isinstance(table, Mapping):
        raise PluginError(f"{where} is not a table")
    unknown = sorted(set(table) - set(FILE_KEYS))
    if unknown:
        raise PluginError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(FILE_KEYS)}"
        )
    urls: dict[str, str] = {}
    for key, value in table.items():
        if key == "codec" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str) or not value:
            raise PluginError(f"{where} {key}: a URL (a non-empty string), not {value!r}")
        if only is None or key == only:
            try:
                for url in value.split(",") if key == "codec" else [value]:
                    require(key, url.strip())
            except PluginError as exc:
                raise PluginError(f"{where} {key}: {exc.detail}") from None
        urls[key] = value
    return urls


def configured(
    kind: str, given: str | None = None, default: str | None = None, *, config_file: ConfigFile | None = None
) -> str | None:
    """What the user chose for ``kind`` (``"registry"``, ``"store"``...), first found of:
    ``given`` (what the code or a CLI flag passes), ``$TRIMICRO_<KIND>``, the ``[plugins]``
    table of the config file (``config_file``, else ``$TRIMICRO_CONFIG``: :func:`from_file`),
    ``default``. An empty value counts as unset. The file is read only when it is needed."""
    _group(kind)
    if given:
        return given
    from_env = os.environ.get(f"TRIMICRO_{kind.upper()}")
    if from_env:
        return from_env
    if kind in FILE_KEYS:
        from_config = from_file(config_file, only=kind).get(kind)
        if from_config:
            return from_config
    return default


def choose(
    kind: str,
    given: Any,
    default: str | None = None,
    *,
    config_file: ConfigFile | None = None,
    **options: Any,
) -> tuple[Any, bool]:
    """What ``start_cluster`` uses for ``kind``, and whether it built it (and so must close it).

    ``given`` is an instance (used as is), a URL, ``None`` (then ``$TRIMICRO_<KIND>``, then the
    config file, then ``default``: :func:`configured`; nothing at all gives ``(None, False)``) or
    ``""`` (explicitly none). An instance shared by name (``memory://NAME``) is not the caller's
    to close: others use it.
    """
    if given is not None and not isinstance(given, str):
        return given, False
    if given == "":
        return None, False
    url = configured(kind, given, default, config_file=config_file)
    if not url:
        return None, False
    built = load(kind, url, **options)
    return built, not any(v is built for v in _shared.values())


def codec_set(spec: Any, registry: Any = None) -> Any:
    """A :class:`~trimicro.mailbox.codec.CodecSet` from codec names or URLs, the first being
    the default (``"msgpack,json"`` or ``["msgpack", "json"]``); anything else is returned as is
    (an instance, or ``None`` for the node's default). Every codec shares ``registry``."""
    if spec is None or not isinstance(spec, str | list | tuple):
        return spec
    from trimicro.mailbox.codec import CodecSet

    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise PluginError("codecs: name at least one codec, e.g. msgpack")
    codecs = [load("codec", name, registry=registry) for name in names]
    return CodecSet(codecs, default=codecs[0].content_type)


# ---- factories of the built-ins (entry points in trimicro's pyproject.toml) ----------------------


def _no_params(url: URL, *allowed: str) -> None:
    extra = sorted(set(url.params) - set(allowed))
    if extra:
        known = ", ".join(allowed) or "none"
        raise PluginError(f"{url.text}: unknown option(s) {', '.join(extra)} (known: {known})")


def _flag(url: URL, name: str, default: bool) -> bool:
    value = url.params.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise PluginError(f"{url.text}: {name} must be true or false, not {value!r}")


def _int(url: URL, name: str) -> dict[str, int]:
    value = url.params.get(name)
    if value is None:
        return {}
    try:
        return {name: int(value)}
    except ValueError:
        raise PluginError(f"{url.text}: {name} must be an integer, not {value!r}") from None


#: ``memory://NAME`` instances shared by name within a process while something uses them, so
#: that two nodes of one process given the same URL find each other (as with one instance).
_shared: weakref.WeakValueDictionary[tuple[str, ...], Any] = weakref.WeakValueDictionary()


def _shared_instance(key: tuple[str, ...], make: Any) -> Any:
    found = _shared.get(key)
    if found is None:
        found = make()
        _shared[key] = found
    return found


def mdns_registry(url: URL, **options: Any) -> Any:
    """``mdns://`` (127.0.0.1 only) or ``mdns://ADDR[,ADDR...]?domain=local.&type=...``."""
    from .registry import MdnsRegistry

    _no_params(url, "domain", "type")
    if url.path not in ("", "/"):
        raise PluginError(f"{url.text}: mdns:// takes interface addresses, not a path")
    if url.host:
        options.setdefault("interfaces", tuple(a.strip() for a in url.host.split(",") if a.strip()))
    if "domain" in url.params:
        options.setdefault("domain", url.params["domain"])
    if "type" in url.params:
        options.setdefault("service_type", url.params["type"])
    return MdnsRegistry(**options)


def memory_registry(url: URL, **options: Any) -> Any:
    """``memory://`` or ``memory://NAME``: one in-process registry per name (see :data:`_shared`)."""
    from .registry import MemoryRegistry

    _no_params(url)
    return _shared_instance(("registry", url.location), lambda: MemoryRegistry(**options))


def static_registry(url: URL, **options: Any) -> Any:
    """``static://HOST:PORT[,HOST:PORT...]`` or ``static://NODE@HOST:PORT,...?cluster=FINGERPRINT``.

    A bare ``HOST:PORT`` is a seed address (:attr:`StaticRegistry.seeds`): ``start_cluster``
    dials it, learns the node id from the handshake and joins the members that node knows
    (:mod:`~trimicro.cluster.membership.seeds`). ``NODE@HOST:PORT`` becomes a ``trimicro.node``
    record that membership joins like a discovered node; it needs the cluster's fingerprint
    (:func:`~trimicro.cluster.registry.cluster_fingerprint` of its authority key), as a node
    does not dial a node whose record names no cluster it trusts. Both kinds may be mixed.
    """
    from .membership.seeds import parse_seed
    from .registry import NODE_SERVICE, NodeInfo, Service, StaticRegistry

    _no_params(url, "cluster")
    cluster = url.params.get("cluster", "")
    nodes = []
    addresses = []
    for seed in (s.strip() for s in url.host.split(",")):
        if not seed:
            continue
        node_id, at, address = seed.rpartition("@")
        if not at:
            try:
                addresses.append(parse_seed(seed))
            except ValueError:
                raise PluginError(
                    f"{url.text}: a seed is HOST:PORT or NODE_ID@HOST:PORT, not {seed!r}"
                ) from None
            continue
        if not node_id or ":" not in address:
            raise PluginError(f"{url.text}: a seed is HOST:PORT or NODE_ID@HOST:PORT, not {seed!r}")
        nodes.append(NodeInfo(node_id, address, {}, cluster))
    seeds = [Service(NODE_SERVICE, "1", {}, (), tuple(nodes))] if nodes else []
    return StaticRegistry(seeds, seeds=addresses, **options)


def memory_store(url: URL, **options: Any) -> Any:
    """``memory://`` or ``memory://NAME?database=...&table=...``: shared by name in a process."""
    from .store import MemoryStore

    _no_params(url, "database", "table")
    for key in ("database", "table"):
        if key in url.params:
            options.setdefault(key, url.params[key])
    shared = ("store", url.location, str(options.get("database", "")), str(options.get("table", "")))
    return _shared_instance(shared, lambda: MemoryStore(**options))


def lmdb_store(url: URL, **options: Any) -> Any:
    """``lmdb:///abs/dir`` or ``lmdb://rel/dir``, with ``?database=&table=&sync=&map_size=``."""
    from .store import LmdbStore

    _no_params(url, "database", "table", "sync", "map_size", "max_map_size")
    for key in ("database", "table"):
        if key in url.params:
            options.setdefault(key, url.params[key])
    if "sync" in url.params:
        options.setdefault("sync", _flag(url, "sync", True))
    for key in ("map_size", "max_map_size"):
        for name, value in _int(url, key).items():
            options.setdefault(name, value)
    return LmdbStore(url.file_path(), **options)


def file_config(url: URL, **options: Any) -> Any:
    """``file:///etc/app.toml`` (JSON, TOML or YAML by suffix, or ``?format=``): a config Source."""
    from .config import FileSource

    _no_params(url, "format")
    if "format" in url.params:
        options.setdefault("format", url.params["format"])
    return FileSource(url.file_path(), **options)


def env_config(url: URL, **options: Any) -> Any:
    """``env://APP_`` (the variables' prefix; ``env://`` is ``APP_``): a config Source."""
    from .config import EnvSource

    _no_params(url)
    return EnvSource(url.location or "APP_", **options)


def _codec(cls_name: str, url: URL, options: dict[str, Any]) -> Any:
    from trimicro.mailbox import codec

    _no_params(url)
    return getattr(codec, cls_name)(**options)


def msgpack_codec(url: URL, **options: Any) -> Any:
    """``msgpack``: the default codec (options ``registry=`` a TypeRegistry, ``limits=``)."""
    return _codec("MsgpackCodec", url, options)


def cbor_codec(url: URL, **options: Any) -> Any:
    """``cbor``: RFC 8949 CBOR (options as :func:`msgpack_codec`)."""
    return _codec("CborCodec", url, options)


def json_codec(url: URL, **options: Any) -> Any:
    """``json``: JSON (options as :func:`msgpack_codec`)."""
    return _codec("JsonCodec", url, options)


def tcp_transport(url: URL, **options: Any) -> Any:
    """``tcp://`` (``?max_frame_size=BYTES``): length-prefixed frames over TCP."""
    from trimicro.mailbox.transport import TcpTransport

    _no_params(url, "max_frame_size")
    for name, value in _int(url, "max_frame_size").items():
        options.setdefault(name, value)
    return TcpTransport(**options)


def inproc_transport(url: URL, **options: Any) -> Any:
    """``inproc://`` or ``inproc://NAME``: in-process connections, shared by name in a process
    (nodes dial each other only through one instance)."""
    from trimicro.mailbox.transport import InprocTransport

    _no_params(url)
    return _shared_instance(("transport", url.location), lambda: InprocTransport(**options))


def cluster_broker(url: URL, **options: Any) -> Any:
    """``cluster://`` (also ``default://``): the cluster's own pub/sub,
    :class:`~trimicro.cluster.broker.PubSub`, on the node ``start_cluster`` passes as ``cluster=``."""
    from .broker import PubSub

    _no_params(url)
    if url.location not in ("", "/"):
        raise PluginError(f"{url.text}: cluster:// takes no address (it runs on the cluster's own links)")
    return PubSub(options.pop("cluster"), **options)


def jwt_auth(url: URL, **options: Any) -> Any:
    """``jwt://`` (also ``default://``): the cluster's JWTs and rules,
    :class:`~trimicro.cluster.auth.JwtAuth`, for the node ``start_cluster`` passes as ``cluster=``
    (with its ``audience=`` and ``refresh=``)."""
    from .auth.default import jwt_auth as build

    _no_params(url)
    if url.location not in ("", "/"):
        raise PluginError(f"{url.text}: jwt:// takes no address")
    return build(options.pop("cluster"), **options)


# ---- NATS (registry, broker and store on one server; see docs/nats.md) ---------------------------


def _nats(url: URL, allowed: tuple[str, ...]) -> Any:
    import importlib.util

    from .natsio import options_from_url

    if importlib.util.find_spec("nats") is None:
        raise PluginError(f"{url.text}: the NATS plugins need nats-py: pip install 'trimicro[nats]'")
    if url.path not in ("", "/"):
        raise PluginError(f"{url.text}: nats:// takes servers (HOST:PORT,...), not a path")
    return options_from_url(url.text, url.host, url.params, allowed)


def nats_registry(url: URL, **options: Any) -> Any:
    """``nats://HOST:PORT?bucket=trimicro_registry&grace=``: a registry on a JetStream KV bucket."""
    from .registry.nats import NatsRegistry

    nats_options = _nats(url, ("bucket", "grace"))
    if "bucket" in url.params:
        options.setdefault("bucket", url.params["bucket"])
    if "grace" in url.params:
        options.setdefault("grace", float(url.params["grace"]))
    return NatsRegistry(nats_options, **options)


def nats_store(url: URL, **options: Any) -> Any:
    """``nats://HOST:PORT?database=&table=&bucket_prefix=trimicro&grace=``: a store on JetStream KV."""
    from .store.nats import NatsStore

    nats_options = _nats(url, ("database", "table", "bucket_prefix", "grace"))
    for key in ("database", "table", "bucket_prefix"):
        if key in url.params:
            options.setdefault(key, url.params[key])
    if "grace" in url.params:
        options.setdefault("grace", float(url.params["grace"]))
    return NatsStore(nats_options, **options)


def nats_broker(url: URL, **options: Any) -> Any:
    """``nats://HOST:PORT?prefix=trimicro&stream=TRIMICRO&ack_wait=30``: core NATS subjects, and
    JetStream for acknowledged publishes, on the node ``start_cluster`` passes as ``cluster=``."""
    from .broker.nats import NatsBroker

    nats_options = _nats(url, ("prefix", "stream", "ack_wait"))
    for key in ("prefix", "stream"):
        if key in url.params:
            options.setdefault(key, url.params[key])
    if "ack_wait" in url.params:
        options.setdefault("ack_wait", float(url.params["ack_wait"]))
    return NatsBroker(options.pop("cluster"), nats_options, **options)
