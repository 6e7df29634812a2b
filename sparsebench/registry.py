"""Name -> class registries for methods and tasks, with lazy built-ins and entry-point plugins.

Built-ins are discovered by importing every module of a package the first time a registry is
read, so ``sparsebench --help`` never pays for importing torch-heavy plugins. Third-party
plugins arrive through an entry-point group and are loaded at the same moment; a plugin that
fails to import is recorded (and shown by ``sparsebench list``) instead of breaking the others.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Generic, TypeVar

from sparsebench.errors import PluginError, UnknownNameError

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """Canonical lookup key: case, '-' and '_' do not matter (``sparse-VD`` == ``sparse_vd``)."""
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and where it came from."""

    name: str
    obj: T
    origin: str


class Registry(Generic[T]):
    """A registry of named plugin classes of one kind (``method`` or ``task``)."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str) -> None:
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self._loading_origin: str | None = None
        self.broken: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@register_method("sparse_vd")``."""

        def decorator(obj: T) -> T:
            key = normalize_name(name)
            if key in self._entries:
                other = self._entries[key]
                raise PluginError(
                    f"{self.kind} name {name!r} is registered twice: by {other.origin} and by "
                    f"{_origin_of(obj, self._loading_origin)}; rename one of them"
                )
            obj.name = name  # type: ignore[attr-defined]
            self._entries[key] = Entry(name, obj, _origin_of(obj, self._loading_origin))
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin_package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.builtin_package}.{info.name}")
        for ep in metadata.entry_points(group=self.entry_point_group):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
            self._loading_origin = f"distribution {origin}"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin (or a decorator clash) must not break the others
                self.broken[ep.name] = f"{origin}: {type(exc).__name__}: {exc}"
                continue
            finally:
                self._loading_origin = None
            # A plugin may register itself with the decorator on import, or just expose a class.
            if any(entry.obj is obj for entry in self._entries.values()):
                continue
            existing = self._entries.get(normalize_name(ep.name))
            if existing is not None:
                self.broken[ep.name] = (
                    f"name clash: distribution {origin} and {existing.origin} both provide "
                    f"{self.kind} {ep.name!r}; uninstall one of them"
                )
                continue
            self._loading_origin = f"distribution {origin}"
            try:
                self.register(ep.name)(obj)
            finally:
                self._loading_origin = None

    def get(self, name: str) -> T:
        """Look a name up, ignoring case, '-' and '_'; unknown names suggest the closest ones."""
        self._load()
        key = normalize_name(name)
        if key in self._entries:
            return self._entries[key].obj
        if name in self.broken:
            raise PluginError(f"{self.kind} plugin {name!r} failed to load: {self.broken[name]}")
        close = difflib.get_close_matches(key, list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(self._entries[k].name for k in close)}? " if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}: {hint}run `sparsebench list {self.kind}s` to see them all"
        )

    def entries(self) -> list[Entry[T]]:
        self._load()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def __iter__(self) -> Iterator[T]:
        return (e.obj for e in self.entries())

    def __contains__(self, name: str) -> bool:
        self._load()
        return normalize_name(name) in self._entries


def _origin_of(obj: object, override: str | None) -> str:
    if override:
        return override
    module = importlib.import_module(obj.__module__)
    return f"file {getattr(module, '__file__', obj.__module__)}"


METHODS: Registry = Registry("method", "sparsebench.methods", "sparsebench.methods")
TASKS: Registry = Registry("task", "sparsebench.tasks", "sparsebench.tasks")

register_method = METHODS.register
register_task = TASKS.register
