"""Network plugins: the registry and discovery.

A plugin is a Python file (in ``plugins/`` or a directory passed as ``plugin_dirs``)
or a module advertised under the entry-point group ``featalign.networks``. It
declares a network with the :func:`network` decorator::

    from typing import Annotated, Literal

    from featalign.plugins import Range, network

    @network(
        name="tiny_gabor",
        description="Two fixed Gabor layers; no invariance beyond translation.",
        layers=["conv1", "conv2"],
        invariant_to=[],
        in_channels=1,
        strides={"conv1": 1, "conv2": 2},
    )
    def build(width: Annotated[int, Range(min=1)] = 8, pool: Literal["max", "mean"] = "max"):
        ...  # return a torch.nn.Module

``build()``'s annotations declare what each option may be (:func:`option_problem`
reads ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, lists and
:class:`Range` bounds in ``typing.Annotated``); the workflow refuses a config whose
options do not fit before any job runs. ``strides={"layer": s}`` declares the layers'
total strides, so that a canvas they do not divide is refused before any job too.

The registry is a plain dict from normalised name to :class:`NetworkSpec`. Loading
is lazy: listing networks imports the plugin files but never builds a network.
Building a network and extracting its layers is :mod:`featalign.extractor`.

Visibility: :func:`load_plugins` (and therefore :func:`get_network` and
:func:`list_networks`) returns the networks defined by the files of the given
directories, plus every network registered by an ordinary import (entry-point
modules, a user's own script). Networks from plugin directories loaded by an
earlier call but not named in this one are not returned. :func:`get_network` and
:func:`list_networks` always search :func:`default_plugin_dirs` as well.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featalign.geometry import FAMILIES
from featalign.options import Range, declared_options, describe_annotation, option_problem

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "SUBGROUPS",
    "NetworkSpec",
    "PluginError",
    "Range",
    "declared_options",
    "default_plugin_dirs",
    "describe_annotation",
    "display_path",
    "get_network",
    "list_networks",
    "load_plugins",
    "network",
    "option_problem",
]

log = logging.getLogger(__name__)

# FAMILIES (re-exported): the families a network may declare invariance to are the
# transformation families of featalign.geometry, defined once there.

SUBGROUPS: tuple[str, ...] = ("rotation90", "flip")
"""Exact subgroups of the pixel grid: multiples of 90°, and reflections about the
axes and diagonals."""

ENTRY_POINT_GROUP = "featalign.networks"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")

# name -> spec. The one registry, a plain dict.
_REGISTRY: dict[str, NetworkSpec] = {}
# Resolved paths of files loaded from plugin directories (by any call of load_plugins).
_PLUGIN_FILES: set[Path] = set()


class PluginError(Exception):
    """A plugin is missing, malformed or broken.

    The message is one sentence naming the file, the layer (if any), the problem
    and the fix.
    """


def display_path(path: Path | str | None) -> str:
    """Return ``path`` relative to the working directory when it lies below it.

    Args:
        path: a file path, or None.

    Returns:
        A short printable path (``"<unknown>"`` for None).

    Example:
        >>> display_path(None)
        '<unknown>'
    """
    if path is None:
        return "<unknown>"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network: its declaration and the function that builds it.

    Attributes:
        name: normalised name (lowercase, stripped).
        description: one line for ``featalign plugins list``.
        layers: the layer labels the extractor returns, in order.
        invariant_to: declared invariances, names from :data:`FAMILIES` or
            :data:`SUBGROUPS` (the theory's prediction for this network).
        in_channels: 1 or 3, the number of image channels the network takes.
        build: ``build(**options) -> torch.nn.Module``.
        source: the file that defined the network.
        nodes: layer label -> torchvision graph node name, for modules that do
            not return a dict; None when the module returns a dict itself (or
            when the layer labels are the node names).
        train: optional training recipe ``train(out: Path, **options)`` that
            writes a weight file.
        strides: layer label -> its total stride, as declared (the layers whose
            stride the plugin states; the feature job measures every layer's anyway).
        head: optional, for classifiers: ``head(model, layer) -> torch.nn.Module``, the
            rest of the network after ``layer``: given the module ``build()`` returned
            and a layer label, a module mapping that layer's feature maps
            (N, C_l, H_l, W_l) to the network's logits (N, classes). The network's own
            logits are ``model(x)``, or ``model(x)["logits"]`` for a module that returns
            a dict (:mod:`featalign.recognition.measure`).
        stages: optional, for speed: ``stages(model) -> [(label, module), …]``, the
            network up to its last declared layer as a chain of modules, each mapping
            the previous one's output to the next, labelled with the declared layer it
            outputs (other labels for the steps between). The feature stage then
            evaluates strided layers densely stage by stage
            (:func:`featalign.stitch.stitch_stages`); a chain that does not reproduce
            the network is found on each job's first images and not used. Not needed
            for a :class:`featalign.nets.Tapped` module (its stages are the chain).
    """

    name: str
    description: str
    layers: tuple[str, ...]
    invariant_to: tuple[str, ...]
    in_channels: int
    build: Callable[..., torch.nn.Module]
    source: Path
    nodes: Mapping[str, str] | None = None
    train: Callable[..., None] | None = None
    strides: Mapping[str, int] | None = None
    head: Callable[[torch.nn.Module, str], torch.nn.Module] | None = None
    stages: Callable[[torch.nn.Module], Sequence[tuple[str, torch.nn.Module]]] | None = None

    def sha256(self) -> str:
        """Return the hex sha256 digest of the source file.

        Raises:
            PluginError: if the source file cannot be read.
        """
        try:
            return hashlib.sha256(Path(self.source).read_bytes()).hexdigest()
        except OSError as exc:
            raise PluginError(
                f"cannot read the source file {display_path(self.source)} of network "
                f"'{self.name}' ({exc.strerror or exc}); define the network in a file."
            ) from exc

    @property
    def display_source(self) -> str:
        """The source path relative to the working directory when possible."""
        return display_path(self.source)


def _normalise_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"network name must be a string, got {type(name).__name__}")
    return name.strip().lower()


def _source_of(fn: Callable[..., Any]) -> Path:
    try:
        path = Path(inspect.getfile(fn))
    except TypeError:
        return Path("<unknown>")
    try:
        return path.resolve() if path.exists() else path
    except OSError:
        return path


def network(
    *,
    name: str,
    description: str,
    layers: Sequence[str],
    invariant_to: Sequence[str] = (),
    in_channels: int = 3,
    nodes: Mapping[str, str] | None = None,
    train: Callable[..., None] | None = None,
    strides: Mapping[str, int] | None = None,
    head: Callable[[torch.nn.Module, str], torch.nn.Module] | None = None,
    stages: Callable[[torch.nn.Module], Sequence[tuple[str, torch.nn.Module]]] | None = None,
) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    """Register the decorated ``build(**options)`` function as a network.

    The declaration is validated here, once; the build function is returned
    unchanged. Registering the same name again from the same file (loading a
    plugin file twice) replaces the earlier entry; from another file it is an error.

    Args:
        name: the network's name; normalised (stripped, lowercased); letters,
            digits, ``_`` and ``-``.
        description: one line saying what the network is and why it is there.
        layers: the layer labels the extractor returns, in order.
        invariant_to: names from :data:`FAMILIES` or :data:`SUBGROUPS`.
        in_channels: 1 or 3.
        nodes: optional mapping layer label -> graph node name, for a module
            that does not return a dict (torchvision models).
        train: optional recipe ``train(out: Path, **options)`` writing weights.
        strides: optional mapping layer label -> total stride (a positive integer),
            for strides that do not depend on the options: the workflow then refuses,
            before any job, a canvas (``datasets.<name>.size``) they do not divide.
        head: optional, for a classifier: ``head(model, layer)`` returns the module that
            maps the feature maps of ``layer`` to the logits (the recognition stage runs
            it after warping them; ``featalign plugins check`` checks it reproduces the
            network's own output).
        stages: optional, for a faster dense evaluation: ``stages(model)`` returns the
            network as a chain of (label, module) steps up to its last declared layer
            (:class:`NetworkSpec`).

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        PluginError: if the declaration is invalid or the name is taken by
            another file.
    """

    def decorator(build: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        source = _source_of(build)
        spec = _make_spec(
            name=name,
            description=description,
            layers=layers,
            invariant_to=invariant_to,
            in_channels=in_channels,
            nodes=nodes,
            train=train,
            strides=strides,
            head=head,
            stages=stages,
            build=build,
            source=source,
        )
        _register(spec)
        return build

    return decorator


def _make_spec(
    *,
    name: object,
    description: object,
    layers: object,
    invariant_to: object,
    in_channels: object,
    nodes: object,
    train: object,
    build: object,
    source: Path,
    strides: object = None,
    head: object = None,
    stages: object = None,
) -> NetworkSpec:
    where = display_path(source)
    norm = _normalise_name(name)
    if not _NAME_RE.match(norm):
        raise PluginError(
            f"{where}: network name {name!r} is not valid; use lowercase letters, digits, "
            "'_' or '-', starting with a letter or digit."
        )
    if not callable(build):
        raise PluginError(
            f"{where}: network '{norm}' decorates a non-callable; decorate a "
            "build(**options) function."
        )
    if not isinstance(description, str):
        raise PluginError(
            f"{where}: network '{norm}' has a non-string description; pass description='...'."
        )
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise PluginError(
            f"{where}: network '{norm}' must declare layers as a list of "
            "strings, e.g. layers=['conv1', 'conv2']."
        )
    layer_t = tuple(layers)
    if not layer_t or not all(isinstance(x, str) and x for x in layer_t):
        raise PluginError(
            f"{where}: network '{norm}' must declare at least one layer, each a non-empty string."
        )
    dup = sorted({x for x in layer_t if layer_t.count(x) > 1})
    if dup:
        raise PluginError(
            f"{where}: network '{norm}' declares layer '{dup[0]}' more than "
            "once; give each layer a unique label."
        )
    if isinstance(invariant_to, str) or not isinstance(invariant_to, Iterable):
        raise PluginError(
            f"{where}: network '{norm}' must declare invariant_to as a list, "
            "e.g. invariant_to=['rotation']."
        )
    inv: list[str] = []
    allowed = FAMILIES + SUBGROUPS
    for entry in invariant_to:
        key = entry.strip().lower() if isinstance(entry, str) else entry
        if key not in allowed:
            raise PluginError(
                f"{where}: invariant_to entry {entry!r} of network '{norm}' is not a known "
                f"family or subgroup; use some of {', '.join(allowed)}."
            )
        if key not in inv:
            inv.append(key)
    if isinstance(in_channels, bool) or in_channels not in (1, 3):
        raise PluginError(
            f"{where}: network '{norm}' declares in_channels={in_channels!r}; "
            "use 1 (grey) or 3 (RGB)."
        )
    node_map: Mapping[str, str] | None = None
    if nodes is not None:
        if not isinstance(nodes, Mapping):
            raise PluginError(
                f"{where}: nodes of network '{norm}' must be a mapping from layer "
                "label to graph node name."
            )
        extra = [k for k in nodes if k not in layer_t]
        if extra:
            raise PluginError(
                f"{where}: nodes of network '{norm}' name layer '{extra[0]}', "
                "which is not in layers; add it to layers or remove it from nodes."
            )
        full = {layer: str(nodes.get(layer, layer)) for layer in layer_t}
        values = list(full.values())
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise PluginError(
                f"{where}: nodes of network '{norm}' map two layers to graph node "
                f"'{twice[0]}'; map each layer to its own node."
            )
        node_map = types.MappingProxyType(full)
    if train is not None and not callable(train):
        raise PluginError(
            f"{where}: train= of network '{norm}' is not callable; pass a "
            "function train(out, **options) or None."
        )
    stride_map: Mapping[str, int] | None = None
    if strides is not None:
        if not isinstance(strides, Mapping):
            raise PluginError(
                f"{where}: strides of network '{norm}' must be a mapping from layer label "
                "to total stride, e.g. strides={'conv1': 1, 'conv2': 2}."
            )
        for layer, stride in strides.items():
            if layer not in layer_t:
                raise PluginError(
                    f"{where}: strides of network '{norm}' name layer {layer!r}, which is "
                    "not in layers; add it to layers or remove it from strides."
                )
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
                raise PluginError(
                    f"{where}: stride {stride!r} of layer '{layer}' of network '{norm}' is "
                    "not a positive integer; declare the layer's total stride, e.g. 2."
                )
        stride_map = types.MappingProxyType({k: int(strides[k]) for k in layer_t if k in strides})
    if head is not None and not callable(head):
        raise PluginError(
            f"{where}: head= of network '{norm}' is not callable; pass a function "
            "head(model, layer) returning the module from that layer to the logits, or None."
        )
    if stages is not None and not callable(stages):
        raise PluginError(
            f"{where}: stages= of network '{norm}' is not callable; pass a function "
            "stages(model) returning [(label, module), ...], or None."
        )
    return NetworkSpec(
        name=norm,
        description=" ".join(description.split()),
        layers=layer_t,
        invariant_to=tuple(inv),
        in_channels=int(in_channels),  # type: ignore[arg-type]
        build=build,  # type: ignore[arg-type]
        source=source,
        nodes=node_map,
        train=train,  # type: ignore[arg-type]
        strides=stride_map,
        head=head,  # type: ignore[arg-type]
        stages=stages,  # type: ignore[arg-type]
    )


def _register(spec: NetworkSpec) -> None:
    old = _REGISTRY.get(spec.name)
    if old is not None and old.source != spec.source:
        raise PluginError(
            f"network name '{spec.name}' is registered twice, in {display_path(old.source)} "
            f"and in {display_path(spec.source)}; rename one of them (names are "
            "case-insensitive)."
        )
    _REGISTRY[spec.name] = spec
    log.debug("registered network %s from %s", spec.name, spec.source)


def default_plugin_dirs() -> list[Path]:
    """Return the built-in plugin folders.

    The repository's ``plugins/`` folder (next to ``src/``) if it exists, and the
    working directory's ``./plugins`` if it exists and is a different folder. When the
    working directory is itself a featalign checkout (it has ``src/featalign/``), only
    its own ``./plugins`` is used: it holds the same built-in networks as the checkout
    featalign was installed from, and running a second checkout (a copy, a clone for
    an experiment) must use that checkout's plugins, not fail on every name twice.

    Returns:
        Resolved directory paths, without duplicates.
    """
    cwd = Path.cwd()
    package = Path(__file__).resolve().parents[2] / "plugins"
    if (cwd / "src" / "featalign" / "__init__.py").is_file():
        package = cwd / "plugins"
    dirs: list[Path] = []
    for cand in (package, cwd / "plugins"):
        if cand.is_dir():
            resolved = cand.resolve()
            if resolved not in dirs:
                dirs.append(resolved)
    return dirs


def _plugin_files(plugin_dirs: Iterable[Path | str]) -> list[Path]:
    files: list[Path] = []
    for d in plugin_dirs:
        path = Path(d)
        if not path.is_dir():
            raise PluginError(
                f"plugin directory {display_path(path)} does not exist or is not a directory; "
                "pass an existing folder of plugin files."
            )
        for f in sorted(path.resolve().glob("*.py")):
            if f.name.startswith("_"):  # helpers and __init__.py are not plugins
                continue
            if f not in files:
                files.append(f)
    return files


def _exec_file(path: Path) -> None:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"featalign_plugin_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(
            f"{display_path(path)}: cannot be loaded as a Python module; check "
            "that it is a readable .py file."
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except PluginError:
        sys.modules.pop(mod_name, None)
        raise
    except Exception as exc:  # any import failure becomes one clear sentence
        sys.modules.pop(mod_name, None)
        raise PluginError(
            f"{display_path(path)}: failed to import ({type(exc).__name__}: {exc}); fix the "
            "error in that file or move it out of the plugin directory."
        ) from exc


def _load_entry_points() -> None:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in eps:
        try:
            ep.load()
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) failed to "
                f"import ({type(exc).__name__}: {exc}); fix or uninstall the package that "
                "provides it."
            ) from exc


def load_plugins(
    plugin_dirs: Iterable[Path | str] = (), *, entry_points: bool = True
) -> dict[str, NetworkSpec]:
    """Load plugin files and entry points and return the networks they define.

    Every ``*.py`` file of each directory (files starting with ``_`` are helpers
    and are skipped) is executed by file path, in sorted order; then the modules
    advertised under the entry-point group ``featalign.networks`` are imported.
    Loading a file again re-registers its networks in place (no duplicate error).
    If anything fails, the registry is left as it was before the call.

    Args:
        plugin_dirs: folders holding plugin files.
        entry_points: also import modules advertised under ``featalign.networks``.

    Returns:
        name -> spec for the networks defined in these folders, plus those
        registered by ordinary imports (entry points, user code), sorted by name.

    Raises:
        PluginError: a directory is missing, a file or entry point fails to
            import, a declaration is invalid, or a name is registered twice.
    """
    files = _plugin_files(plugin_dirs)
    saved_registry = dict(_REGISTRY)
    saved_files = set(_PLUGIN_FILES)
    try:
        for f in files:
            # forget this file's earlier registrations so that a re-load (maybe of an
            # edited file) starts clean and only a *different* file can collide
            for key in [k for k, s in _REGISTRY.items() if s.source == f]:
                del _REGISTRY[key]
            _PLUGIN_FILES.add(f)
            _exec_file(f)
        if entry_points:
            _load_entry_points()
    except BaseException:
        _REGISTRY.clear()
        _REGISTRY.update(saved_registry)
        _PLUGIN_FILES.clear()
        _PLUGIN_FILES.update(saved_files)
        raise
    wanted = set(files)
    visible = {
        name: spec
        for name, spec in _REGISTRY.items()
        if spec.source in wanted or spec.source not in _PLUGIN_FILES
    }
    return dict(sorted(visible.items()))


def _search_dirs(plugin_dirs: Iterable[Path | str]) -> list[Path]:
    dirs = default_plugin_dirs()
    for d in plugin_dirs:
        p = Path(d)
        key = p.resolve() if p.exists() else p
        if key not in dirs:
            dirs.append(key)
    return dirs


def list_networks(plugin_dirs: Iterable[Path | str] = ()) -> list[NetworkSpec]:
    """Return every visible network, sorted by name, without building any.

    Args:
        plugin_dirs: extra plugin folders, searched after :func:`default_plugin_dirs`.

    Returns:
        The specs, sorted by name.

    Raises:
        PluginError: as :func:`load_plugins`.
    """
    return list(load_plugins(_search_dirs(plugin_dirs)).values())


def get_network(name: str, plugin_dirs: Iterable[Path | str] = ()) -> NetworkSpec:
    """Return the spec of the network called ``name``.

    Args:
        name: the network name (case-insensitive).
        plugin_dirs: extra plugin folders, searched after :func:`default_plugin_dirs`.

    Returns:
        The registered :class:`NetworkSpec`.

    Raises:
        PluginError: if no network has that name (the message lists the
            available names), or as :func:`load_plugins`.
    """
    specs = load_plugins(_search_dirs(plugin_dirs))
    key = _normalise_name(name)
    if key not in specs:
        names = ", ".join(specs) or "none"
        raise PluginError(
            f"no network is called '{name}'; available networks are: {names} (add a plugin "
            "folder with --plugin-dir or plugin_dirs if yours is elsewhere)."
        )
    return specs[key]
