"""By-name registries for schedulers, caches, verifiers and model architectures.

A :class:`Registry` maps a name to a class. Entries are either registered directly (a class, checked at
registration) or lazily, as a ``"module:Class"`` string that is imported on first use. Out-of-tree plugins
are found through an entry-point group (``dlm.schedulers``, ``dlm.caches``, ``dlm.verifiers``), read once,
the first time the registry is asked for a name or a listing.

Rules (the same for every registry):

* a duplicate name raises :class:`~dlm.errors.RegistryError` unless ``override=True``;
* an unknown name raises, listing the known ones;
* a plugin that fails to import raises with its name, its target and the distribution that declared it;
  it is never logged and dropped;
* an entry point whose name is already taken (by a built-in, by a class registered in this process, or by
  another distribution) raises, naming both sides, whenever the plugins are read (listing, or looking up a name
  not registered in this process); entry points cannot override. Declaring the class that the plugin's own
  module also registers with the decorator under the same name is not a clash.

Names registered in this process (built-ins and ``@register_...`` decorators) are found without reading the
entry points, so importing dlm and using built-ins never touches installed distributions' metadata.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, Iterator, TypeVar

from .errors import ConfigError, RegistryError

T = TypeVar("T")

BUILTIN = "dlm"


class Configurable:
    """Base of what a registry builds by name with keyword parameters (schedulers, caches, verifiers): a frozen
    ``Params`` dataclass validated at construction (unknown or invalid parameters are a ConfigError naming the
    component), the registered ``name`` and a JSON-able :meth:`config`."""

    kind: ClassVar[str] = "component"  # the word error messages use: "scheduler", "cache", "verifier"
    registered_name: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ConfigError(
                f"{self.kind} {self.name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(sorted(fields)) or '(none)'}"
            )
        try:
            self.params = self.Params(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.kind} {self.name!r}: {exc}") from exc

    @property
    def name(self) -> str:
        # the class's own registration only: an unregistered subclass must not report its parent's name
        return type(self).__dict__.get("registered_name") or type(self).__name__

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict."""
        return dataclasses.asdict(self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Entry:
    """One registered name: where it comes from and (once resolved) the class.

    Attributes:
        target: ``"module:Class"`` for lazy entries (entry points, string registrations), else ``None``.
        source: ``"dlm"`` for built-ins; the distribution that declared it for entry-point plugins; the module
            that registered it otherwise.
        obj: the class, once known.
        plugin: declared through the entry-point group (forgotten by :meth:`Registry.reset_plugins`).
    """

    name: str
    target: str | None
    source: str
    obj: type | None = None
    plugin: bool = False


def _source_of(target: type | str) -> str:
    module = target.partition(":")[0] if isinstance(target, str) else getattr(target, "__module__", "") or ""
    return BUILTIN if module == BUILTIN or module.startswith(BUILTIN + ".") else module


def _target_of(obj: object) -> str | None:
    """``"module:QualName"`` of a class (what an entry point naming it would say)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else None


class Registry(Generic[T]):
    """A name -> class mapping with lazy targets and entry-point plugins.

    Args:
        kind: what the registry holds, used in messages ("scheduler", "cache", ...).
        group: the entry-point group scanned for plugins, or ``None`` for no plugins.
        check: called with each class when it is registered or resolved; raises on a bad class.
    """

    def __init__(self, kind: str, group: str | None = None, check: Callable[[type], None] | None = None):
        self.kind = kind
        self.group = group
        self._check = check
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = group is None
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- registration
    def register(self, name: str, target: type | str | None = None, *, override: bool = False,
                 source: str | None = None):
        """Register ``target`` under ``name``; without ``target``, return a class decorator.

        ``target`` may be a class (checked now) or a ``"module:Class"`` string (checked on first use).
        ``source`` defaults to ``"dlm"`` for dlm's own modules, else the registering class's module.
        """
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RegistryError(f"{self.kind} name must be a non-empty identifier (letters, digits, '_', '-'), got {name!r}")
        if target is None:

            def decorator(cls: type) -> type:
                self.register(name, cls, override=override, source=source)
                return cls

            return decorator
        if source is None:
            source = _source_of(target)
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not override and not isinstance(target, str):
                if old.obj is target:
                    return target  # the same class registered again (e.g. its module imported twice)
                if old.obj is None and old.target is not None and old.target == _target_of(target):
                    # a lazy entry (e.g. an entry point) naming exactly this class, whose module registers it
                    # with the decorator while being imported: fill the entry in instead of clashing
                    if self._check is not None:
                        self._check(target)
                    self._set_name(target, name)
                    self._entries[name] = dataclasses.replace(old, obj=target)
                    return target
            if old is not None and not override:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {old.source}"
                    f"{', ' + old.target if old.target else ''}); pass override=True to replace it"
                )
            if isinstance(target, str):
                if ":" not in target:
                    raise RegistryError(f"lazy {self.kind} target must look like 'module:Class', got {target!r}")
                self._entries[name] = Entry(name, target, source)
            else:
                if self._check is not None:
                    self._check(target)
                self._set_name(target, name)
                self._entries[name] = Entry(name, None, source, target)
        return target

    @staticmethod
    def _set_name(obj: object, name: str) -> None:
        try:
            obj.registered_name = name  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    # ----------------------------------------------------------------- plugins
    def _load_plugins(self) -> None:
        """Read the entry-point group once. A clash raises, and raises again on the next read: it is never
        half-applied or forgotten."""
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            found: dict[str, Entry] = {}
            for ep in _entry_points(self.group):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
                old = self._entries.get(ep.name) or found.get(ep.name)
                if old is not None:
                    if old.target == ep.value or (old.obj is not None and _target_of(old.obj) == ep.value):
                        # the same class: a distribution seen twice on sys.path, or a plugin module that was
                        # imported (and registered itself) before the entry points were read
                        if not old.plugin:
                            found[ep.name] = dataclasses.replace(old, target=ep.value, source=dist, plugin=True)
                        continue
                    raise RegistryError(
                        f"{self.kind} plugin {ep.name!r} from distribution {dist!r} ({ep.value}) clashes with the "
                        f"{self.kind} of that name registered by {old.source}"
                        f"{' (' + old.target + ')' if old.target else ''}; rename the plugin's entry point "
                        "(entry points cannot override)"
                    )
                found[ep.name] = Entry(ep.name, ep.value, dist, plugin=True)
            self._entries.update(found)
            self._plugins_loaded = True

    # ----------------------------------------------------------------- lookup
    def get(self, name: str) -> type:
        """The class registered under ``name`` (importing it if it is lazy).

        Entry points are read only when ``name`` is not registered in this process.
        """
        entry = self._entries.get(name)
        if entry is None:
            self._load_plugins()
            entry = self._entries.get(name)
        if entry is None:
            raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}")
        if entry.obj is not None:
            return entry.obj
        obj = self._resolve(entry)
        with self._lock:
            self._entries[name] = dataclasses.replace(self._entries.get(name, entry), obj=obj)
        return obj

    def _resolve(self, entry: Entry) -> type:
        assert entry.target is not None
        module_name, _, attr = entry.target.partition(":")
        where = f"{self.kind} plugin {entry.name!r} ({entry.target}, from distribution {entry.source!r})"
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's identity
            raise RegistryError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
        if self._check is not None:
            try:
                self._check(obj)
            except RegistryError as exc:
                raise RegistryError(f"{where} is not a valid {self.kind}: {exc}") from exc
        self._set_name(obj, entry.name)
        return obj

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load_plugins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def reset_plugins(self) -> None:
        """Forget entry-point plugins so the group is read again on next use (for tests that fake a plugin).

        Classes registered in this process (built-ins, decorators) stay.
        """
        with self._lock:
            for name in [n for n, e in self._entries.items() if e.plugin]:
                del self._entries[name]
            self._plugins_loaded = self.group is None


def _entry_points(group: str | None):
    if group is None:
        return []
    eps = importlib.metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # pragma: no cover - Python < 3.10 API
