"""Name -> class registries for methods and tasks, with lazy built-ins and entry-point plugins.

Built-ins are discovered by importing every module of a package the first time a registry is
read, so ``sparsebench --help`` never pays for importing torch-heavy plugins. Third-party
plugins arrive through an entry-point group and are loaded at the same moment. A plugin that
fails to import, is not a class of the registry's base type, is abstract, or declares a ``name``
other than its entry point's is recorded in ``broken`` (and shown by ``sparsebench list``), named
with its distribution, instead of breaking the others or the project's own tests.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
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
    builtin: bool = False
    """Shipped with sparsebench (imported from the registry's built-in package), not a plugin."""


class Registry(Generic[T]):
    """A registry of named plugin classes of one kind (``method`` or ``task``)."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str, base: str = "") -> None:
        """``base`` ("module:Class", imported only when a plugin is checked) is the class every
        entry point must subclass; "" accepts any object."""
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self.base = base
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self._loading_origin: str | None = None
        self.broken: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@register_method("sparse_vd")``.

        The class's ``name`` becomes ``name``; a class that declares a different ``name`` of its own
        is a PluginError naming both (the registered name is what runs and reports are keyed by).
        """

        def decorator(obj: T) -> T:
            key = normalize_name(name)
            origin = _origin_of(obj, self._loading_origin)
            if key in self._entries:
                other = self._entries[key]
                raise PluginError(
                    f"{self.kind} name {name!r} is registered twice: by {other.origin} and by "
                    f"{origin}; rename one of them"
                )
            if (problem := self._check_plugin(obj)) is not None:
                raise PluginError(f"{self.kind} {name!r} (by {origin}) cannot be registered: {problem}")
            declared = vars(obj).get("name", "") if isinstance(obj, type) else ""
            if declared and declared != name:
                raise PluginError(
                    f"{self.kind} class {obj.__qualname__} declares name {declared!r} but is registered "  # type: ignore[attr-defined]
                    f"as {name!r} (by {origin}); make the two the same"
                )
            obj.name = name  # type: ignore[attr-defined]
            self._entries[key] = Entry(name, obj, origin, self._is_builtin(obj))
            return obj

        return decorator

    def _is_builtin(self, obj: object) -> bool:
        module = getattr(obj, "__module__", "") or ""
        return self._loading_origin is None and (
            module == self.builtin_package or module.startswith(self.builtin_package + ".")
        )

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
                problem = self._load_plugin(ep)
            except (Exception, SystemExit) as exc:  # one broken plugin must not break the others
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                self._loading_origin = None
            if problem:
                self.broken[ep.name] = f"{origin}: {problem}"

    def _load_plugin(self, ep: metadata.EntryPoint) -> str:
        """Import one entry point and register what it names; the problem found, or ""."""
        obj = ep.load()
        # A plugin may register itself with the decorator on import (checked there), or just expose a class.
        if any(entry.obj is obj for entry in self._entries.values()):
            return ""
        if (problem := self._check_plugin(obj)) is not None:
            return problem
        existing = self._entries.get(normalize_name(ep.name))
        if existing is not None:
            return (
                f"name clash: it and {existing.origin} both provide {self.kind} {ep.name!r}; "
                "uninstall one of them"
            )
        self.register(ep.name)(obj)
        return ""

    def _check_plugin(self, obj: object) -> str | None:
        """Why ``obj`` cannot be a plugin of this registry, or None."""
        if not self.base:
            return None
        module, _, attr = self.base.partition(":")
        base = getattr(importlib.import_module(module), attr)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            return f"the entry point names {obj!r}, which is not a subclass of {base.__name__}"
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            return f"{obj.__name__} does not implement {missing}"
        return None

    def get(self, name: str) -> T:
        """Look a name up, ignoring case, '-' and '_'; unknown names suggest the closest ones."""
        self._load()
        key = normalize_name(name)
        if key in self._entries:
            return self._entries[key].obj
        for broken, why in self.broken.items():
            if normalize_name(broken) == key:
                raise PluginError(f"{self.kind} plugin {broken!r} failed to load: {why}")
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

    def builtin_names(self) -> list[str]:
        """Names shipped with sparsebench: what the project's own tests cover, whatever is installed."""
        return [e.name for e in self.entries() if e.builtin]

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


METHODS: Registry = Registry(
    "method", "sparsebench.methods", "sparsebench.methods", base="sparsebench.method:SparsityMethod"
)
TASKS: Registry = Registry("task", "sparsebench.tasks", "sparsebench.tasks", base="sparsebench.task:Task")

register_method = METHODS.register
register_task = TASKS.register
