"""By-name registries for schedulers, caches, verifiers and model architectures.

A :class:`Registry` maps a name to a class. Entries are either registered directly (a class, checked at
registration) or lazily, as a ``"module:Class"`` string that is imported on first use. Out-of-tree plugins
are found through an entry-point group (``dlm.schedulers``, ``dlm.caches``, ``dlm.verifiers``), read once,
the first time the registry is asked for a name or a listing.

Rules (the same for every registry):

* a duplicate name raises :class:`~dlm.errors.RegistryError` unless ``override=True``;
* an unknown name raises, listing the known ones;
* a plugin that fails to import raises with its name, its target and the distribution that declared it;
  it is never logged and dropped.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")

BUILTIN = "dlm"


@dataclass(frozen=True)
class Entry:
    """One registered name: where it comes from and (once resolved) the class."""

    name: str
    target: str | None  # "module:Class" for lazy entries
    source: str  # "dlm" for built-ins, else the distribution that declared the entry point
    obj: type | None = None


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
    def register(self, name: str, target: type | str | None = None, *, override: bool = False, source: str = BUILTIN):
        """Register ``target`` under ``name``; without ``target``, return a class decorator.

        ``target`` may be a class (checked now) or a ``"module:Class"`` string (checked on first use).
        """
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RegistryError(f"{self.kind} name must be a non-empty identifier (letters, digits, '_', '-'), got {name!r}")
        if target is None:

            def decorator(cls: type) -> type:
                self.register(name, cls, override=override, source=source)
                return cls

            return decorator
        with self._lock:
            if name in self._entries and not override:
                old = self._entries[name]
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
                try:
                    target.registered_name = name  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
                self._entries[name] = Entry(name, None, source, target)
        return target

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    # ----------------------------------------------------------------- plugins
    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            for ep in _entry_points(self.group):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
                if ep.name in self._entries:
                    old = self._entries[ep.name]
                    if old.source == dist and old.target == ep.value:
                        continue
                    raise RegistryError(
                        f"{self.kind} plugin {ep.name!r} from distribution {dist!r} ({ep.value}) clashes with the "
                        f"{self.kind} of that name registered by {old.source}; rename the plugin's entry point"
                    )
                self._entries[ep.name] = Entry(ep.name, ep.value, dist)

    # ----------------------------------------------------------------- lookup
    def get(self, name: str) -> type:
        """The class registered under ``name`` (importing it if it is lazy)."""
        self._load_plugins()
        entry = self._entries.get(name)
        if entry is None:
            raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}")
        if entry.obj is not None:
            return entry.obj
        obj = self._resolve(entry)
        with self._lock:
            self._entries[name] = Entry(entry.name, entry.target, entry.source, obj)
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
        try:
            obj.registered_name = entry.name
        except (AttributeError, TypeError):
            pass
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
        """Forget entry-point plugins so the group is read again (used by tests that install a plugin)."""
        with self._lock:
            for name in [n for n, e in self._entries.items() if e.source != BUILTIN]:
                del self._entries[name]
            self._plugins_loaded = self.group is None


def _entry_points(group: str | None):
    if group is None:
        return []
    eps = importlib.metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # pragma: no cover - Python < 3.10 API
