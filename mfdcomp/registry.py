"""The codec registry: plugins found through the ``mfdcomp.methods`` entry points.

Each entry point names a module (or object) with a ``mfdcomp_methods`` hook
implementation returning the codecs it provides. Built-in codecs register
exactly like third-party ones. A plugin that fails to import, to answer the
hook, or that returns something other than codecs is listed with its error
and never stops the others; a second codec of an already-taken name is
refused.

The same plugin may also implement ``mfdcomp_doctor``: what it sees of its own
hardware, as :class:`~mfdcomp.diagnosis.DoctorSection` records, which
``mfdcomp doctor`` gathers (:meth:`Registry.implementations`) and renders.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from mfdcomp.diagnosis import DoctorSection, Identity
from mfdcomp.errors import PluginError
from mfdcomp.methods import Codec, CodecInfo, PathProbe

ENTRY_POINT_GROUP = "mfdcomp.methods"
PROJECT = "mfdcomp"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MethodsSpec:
    @hookspec
    def mfdcomp_methods(self) -> list[Codec]:  # type: ignore[empty-body]
        """The codecs this plugin provides (one Codec per codec name)."""

    @hookspec
    def mfdcomp_doctor(  # type: ignore[empty-body]
        self,
        root: Path,
        identity: Identity,
        memlock: int | None,
        probes: Mapping[str, Sequence[PathProbe]],
    ) -> list[DoctorSection]:
        """What this plugin sees of its hardware on the host under ``root``, one section per device family.

        ``identity`` is who would open the device nodes; ``memlock`` the locked-memory limit in bytes (None:
        this process's own); ``probes`` every registered codec's probe results by codec name. An
        implementation takes only the arguments it needs (pluggy passes them by name). Read files only:
        never open a device or load a library here beyond what the codec's own probe did.
        """


HOOK_NAMES = ("mfdcomp_methods", "mfdcomp_doctor")


class _Manager(pluggy.PluginManager):
    """Takes a plain ``mfdcomp_methods`` or ``mfdcomp_doctor`` function as a hook implementation.

    A plugin module then needs no import of mfdcomp to be found, as pytest
    does for its ``pytest_`` functions.
    """

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOK_NAMES and callable(getattr(plugin, name, None)):
            return pluggy.HookimplOpts(
                wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=None
            )
        return opts


@dataclass(frozen=True)
class PluginRecord:
    """One entry point, what it registered, and what went wrong if anything."""

    name: str
    source: str
    codecs: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Candidate:
    """A plugin to register: a name, where it came from, and how to load it."""

    name: str
    source: str
    load: Callable[[], object]


@dataclass(frozen=True)
class HookCall:
    """One plugin's implementation of a hook, to be called on its own (so one that raises harms no other)."""

    plugin: str  # "name (source)", as the reports show it
    function: Callable[..., object]
    argnames: tuple[str, ...]

    def __call__(self, **kwargs: object) -> object:
        # pluggy's calling convention: the implementation takes any subset of the spec's arguments.
        return self.function(**{name: kwargs[name] for name in self.argnames})


@dataclass
class Registry:
    codecs: dict[str, Codec] = field(default_factory=dict)
    plugins: list[PluginRecord] = field(default_factory=list)
    # Every plugin object that loaded and registered, in registration order, with its displayed name.
    loaded: list[tuple[str, object]] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None

    @classmethod
    def from_candidates(cls, candidates: Iterable[Candidate]) -> Registry:
        registry = cls()
        manager = _Manager(PROJECT)
        manager.add_hookspecs(MethodsSpec)
        registry.manager = manager
        for candidate in candidates:
            registry._register(manager, candidate)
        return registry

    def implementations(self, hook: str) -> list[HookCall]:
        """The loaded plugins' implementations of ``hook``, in registration order."""
        if self.manager is None:
            return []
        impls = getattr(self.manager.hook, hook).get_hookimpls()
        return [
            HookCall(name, i.function, tuple(i.argnames))
            for name, plugin in self.loaded
            for i in impls
            if i.plugin is plugin
        ]

    def _register(self, manager: pluggy.PluginManager, candidate: Candidate) -> None:
        errors: list[str] = []
        names: list[str] = []
        try:
            plugin = candidate.load()
            manager.register(plugin, name=f"{candidate.source}:{candidate.name}")
            # Kept even if its codecs fail below: its doctor hook may say why.
            self.loaded.append((f"{candidate.name} ({candidate.source})", plugin))
            impls = [i for i in manager.hook.mfdcomp_methods.get_hookimpls() if i.plugin is plugin]
            if not impls:
                raise PluginError("it implements no mfdcomp_methods hook")
            provided = impls[0].function()
        except Exception as exc:
            self.plugins.append(PluginRecord(candidate.name, candidate.source, errors=(_describe(exc),)))
            return
        for codec in _as_list(provided, errors):
            problem = _check_codec(codec)
            if problem is None and codec.info.name in self.codecs:
                problem = f"codec name {codec.info.name!r} is already taken by another plugin"
            if problem is None and codec.info.extension_id is not None:
                taken = [c.info.name for c in self.codecs.values() if c.info.extension_id == codec.info.extension_id]
                if taken:
                    problem = f"codec {codec.info.name!r}: extension id {codec.info.extension_id} is {taken[0]}'s"
            if problem is not None:
                errors.append(problem)
                continue
            self.codecs[codec.info.name] = codec
            names.append(codec.info.name)
        self.plugins.append(PluginRecord(candidate.name, candidate.source, tuple(names), tuple(errors)))

    def get(self, name: str) -> Codec:
        codec = self.codecs.get(name)
        if codec is None:
            known = ", ".join(sorted(self.codecs)) or "none"
            broken = [p for p in self.plugins if not p.ok]
            hint = f"; {len(broken)} plugin(s) failed to load, see `mfdcomp codecs`" if broken else ""
            raise PluginError(f"no codec named {name!r} (registered: {known}){hint}")
        return codec

    def for_flag(self, flag: int) -> Codec | None:
        """The codec of QEMU's codec bits ``flag`` (the first registered, if several claim it), or None."""
        return next((c for c in self.codecs.values() if c.info.qemu_flag == flag), None)


def _as_list(provided: object, errors: list[str]) -> list[Codec]:
    if isinstance(provided, list | tuple):
        return list(provided)
    errors.append(f"mfdcomp_methods returned {type(provided).__name__}, not a list of codecs")
    return []


def _check_codec(codec: object) -> str | None:
    info = getattr(codec, "info", None)
    if not isinstance(info, CodecInfo):
        return f"{codec!r} has no CodecInfo record in .info"
    if not callable(getattr(codec, "methods", None)):
        return f"codec {info.name!r} has no methods(page_size, level) factory"
    if info.qemu_flag is None and info.extension_id is None:
        return f"codec {info.name!r} has neither a QEMU flag nor an mfdcomp extension id"
    if info.qemu_flag is not None and info.extension_id is not None:
        return f"codec {info.name!r} has both a QEMU flag and an extension id; a packet can carry only one"
    if info.extension_id is not None and not 0 < info.extension_id < 2**32:
        return f"codec {info.name!r}: extension id must be 1 to 2**32-1, got {info.extension_id}"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def entry_point_candidates() -> list[Candidate]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return [
        Candidate(ep.name, ep.dist.name if ep.dist is not None else ep.value, ep.load)
        for ep in sorted(found, key=lambda ep: ep.name)
    ]


@functools.cache
def default_registry() -> Registry:
    """The registry of every installed plugin, loaded once per process."""
    return Registry.from_candidates(entry_point_candidates())


def get_codec(name: str) -> Codec:
    return default_registry().get(name)
