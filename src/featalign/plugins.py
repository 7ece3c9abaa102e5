"""Network plugins: the registry, discovery and feature extraction.

A plugin is a Python file (in ``plugins/`` or a directory passed as ``plugin_dirs``)
or a module advertised under the entry-point group ``featalign.networks``. It
declares a network with the :func:`network` decorator::

    from featalign.plugins import network

    @network(
        name="tiny_gabor",
        description="Two fixed Gabor layers; no invariance beyond translation.",
        layers=["conv1", "conv2"],
        invariant_to=[],
        in_channels=1,
    )
    def build(**options):
        ...  # return a torch.nn.Module

The registry is a plain dict from normalised name to :class:`NetworkSpec`. Loading
is lazy: listing networks imports the plugin files but never builds a network.

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

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "SUBGROUPS",
    "FeatureExtractor",
    "NetworkSpec",
    "PluginError",
    "build_extractor",
    "default_plugin_dirs",
    "display_path",
    "get_network",
    "graph_nodes",
    "list_networks",
    "load_plugins",
    "network",
]

log = logging.getLogger(__name__)

# FAMILIES (re-exported): the families a network may declare invariance to are the
# transformation families of featalign.geometry, defined once there.

SUBGROUPS: tuple[str, ...] = ("rotation90", "flip")
"""Exact subgroups of the pixel grid: multiples of 90°, and reflections about the
axes and diagonals."""

ENTRY_POINT_GROUP = "featalign.networks"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_PROBE_SIZE = 64

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


def graph_nodes(model: torch.nn.Module) -> list[str]:
    """Return the graph node names of ``model`` traced in eval mode.

    Args:
        model: a module traceable by torch.fx (torchvision's tracer).

    Returns:
        Node names accepted by ``create_feature_extractor``'s ``return_nodes``.
    """
    from torchvision.models.feature_extraction import get_graph_node_names

    was_training = model.training
    model.eval()
    try:
        _, eval_nodes = get_graph_node_names(model)
    finally:
        model.train(was_training)
    return list(eval_nodes)


class FeatureExtractor(torch.nn.Module):
    """A network wrapped to return exactly its declared layers.

    Attributes:
        spec: the network's spec.
        layers: the layer labels, in order.
        nodes: layer label -> graph node name, or None when the module returns a
            dict itself.
        inner: the wrapped module (the plugin's module, or torchvision's feature
            extractor around it).
    """

    def __init__(
        self, spec: NetworkSpec, inner: torch.nn.Module, nodes: Mapping[str, str] | None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.layers = tuple(spec.layers)
        self.nodes = dict(nodes) if nodes is not None else None
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extract the declared layers.

        Args:
            x: images of shape (N, in_channels, H, W).

        Returns:
            {layer: features of shape (N, C_l, H_l, W_l)} with exactly the
            declared layers, in order.

        Raises:
            ValueError: if ``x`` is not (N, in_channels, H, W).
            PluginError: if the module's output breaks the contract.
        """
        if x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(
                f"network '{self.spec.name}' takes images of shape (N, {self.spec.in_channels}, "
                f"H, W), got {tuple(x.shape)}"
            )
        out = self.inner(x)
        where = self.spec.display_source
        if not isinstance(out, Mapping):
            raise PluginError(
                f"{where}: the module of network '{self.spec.name}' returned "
                f"{type(out).__name__}, not a dict of layers; return {{layer: tensor}} from "
                "forward or declare nodes= for a torchvision-style module."
            )
        result: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            if layer not in out:
                raise PluginError(
                    f"{where}: layer '{layer}' of network '{self.spec.name}' is missing from "
                    f"the module's output (it has {', '.join(map(str, out)) or 'nothing'}); "
                    "return every declared layer."
                )
            value = out[layer]
            if not isinstance(value, torch.Tensor) or value.ndim != 4:
                what = (
                    f"shape {tuple(value.shape)}"
                    if isinstance(value, torch.Tensor)
                    else type(value).__name__
                )
                raise PluginError(
                    f"{where}: layer '{layer}' of network '{self.spec.name}' is {what}, not a "
                    "4-D tensor (N, C, H, W); return feature maps with a channel axis."
                )
            result[layer] = value
        return result


def _probe(model: torch.nn.Module, in_channels: int) -> tuple[bool, Exception | None]:
    """Run one forward on a zero image: (returns a mapping?, the exception if it raised)."""
    try:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad():
            out = model(
                torch.zeros(1, in_channels, _PROBE_SIZE, _PROBE_SIZE, device=device, dtype=dtype)
            )
    except Exception as exc:  # noqa: BLE001 -- a failing probe means "try the node names"
        return False, exc
    return isinstance(out, Mapping), None


def build_extractor(
    spec: NetworkSpec, options: Mapping[str, Any] | None = None
) -> FeatureExtractor:
    """Build the network and wrap it to return its declared layers.

    ``spec.build(**options)`` is called. If the module returns a dict itself it is
    used as is; otherwise (``spec.nodes`` given, or a probe forward on a zero
    image of 64×64 does not return a dict) it is wrapped with torchvision's
    ``create_feature_extractor(model.eval(), return_nodes={node: label})``, after
    checking the node names against ``get_graph_node_names`` traced in eval mode (a
    module name such as ``layer1`` stands for the last node below it).
    Exceptions raised by the plugin's own ``build`` propagate unchanged.

    Args:
        spec: the network's spec.
        options: keyword arguments for ``spec.build``.

    Returns:
        A module in eval mode, parameters frozen, whose forward maps images of
        shape (N, in_channels, H, W) to {layer: (N, C_l, H_l, W_l)} with exactly
        ``spec.layers`` in order.

    Raises:
        PluginError: build returns something other than a module, or a layer's
            graph node does not exist.
    """
    where = spec.display_source
    model = spec.build(**dict(options or {}))
    if not isinstance(model, torch.nn.Module):
        raise PluginError(
            f"{where}: build() of network '{spec.name}' returned {type(model).__name__}, not a "
            "torch.nn.Module; return the module."
        )
    model.eval()
    nodes = spec.nodes
    probe_error: Exception | None = None
    if nodes is None:
        is_dict, probe_error = _probe(model, spec.in_channels)
        if not is_dict:
            nodes = {layer: layer for layer in spec.layers}
    if nodes is not None:
        from torchvision.models.feature_extraction import create_feature_extractor

        probe_msg = (
            f"its forward on a (1, {spec.in_channels}, {_PROBE_SIZE}, {_PROBE_SIZE}) zero image "
            f"raised {type(probe_error).__name__}: {' '.join(str(probe_error).split())}"
            if probe_error is not None
            else ""
        )
        try:
            available = set(graph_nodes(model))
        except Exception as exc:
            if probe_error is not None:
                raise PluginError(
                    f"{where}: the module of network '{spec.name}' is broken: {probe_msg}; fix "
                    "its forward."
                ) from probe_error
            raise PluginError(
                f"{where}: the module of network '{spec.name}' does not return a dict and "
                f"cannot be traced by torch.fx ({type(exc).__name__}: {exc}); return "
                "{layer: tensor} from forward instead."
            ) from exc
        for layer, node in nodes.items():
            # torchvision accepts a module name too: the last node under that prefix
            if node not in available and not any(a.startswith(node + ".") for a in available):
                if probe_error is not None and spec.nodes is None:
                    raise PluginError(
                        f"{where}: the module of network '{spec.name}' is broken: {probe_msg}; "
                        "fix its forward."
                    ) from probe_error
                raise PluginError(
                    f"{where}: layer '{layer}' of network '{spec.name}' maps to graph node "
                    f"'{node}', which the model (traced in eval mode) does not have; run "
                    f"`featalign plugins nodes {spec.name}` to list the node names and fix "
                    "nodes= or layers=."
                )
        model = create_feature_extractor(
            model, return_nodes={node: layer for layer, node in nodes.items()}
        )
    extractor = FeatureExtractor(spec, model, nodes)
    extractor.eval()
    extractor.requires_grad_(False)
    return extractor
