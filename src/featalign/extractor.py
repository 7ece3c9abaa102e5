"""Feature extraction: a registered network built and wrapped to return its declared layers.

:func:`build_extractor` turns a :class:`~featalign.plugins.NetworkSpec` (what the
registry holds) into a module whose forward maps images (N, in_channels, H, W) to
``{layer: (N, C_l, H_l, W_l)}`` with exactly the declared layers: a module that
returns a dict is used as is, any other is wrapped with torchvision's
``create_feature_extractor`` by graph node names (:func:`graph_nodes` lists them).
The feature stage (:mod:`featalign.features`) and ``featalign plugins check``
(:mod:`featalign.check`) extract through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featalign.plugins import NetworkSpec, PluginError

__all__ = ["PROBE_SIZE", "FeatureExtractor", "build_extractor", "graph_nodes"]

PROBE_SIZE = 64
"""Side of the zero image of the probe forward that tells a dict-returning module apart."""


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


def _returns_dict(model: torch.nn.Module, in_channels: int) -> tuple[bool, Exception | None]:
    """Run one forward on a zero image: (returns a mapping?, the exception if it raised)."""
    try:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad():
            out = model(
                torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE, device=device, dtype=dtype)
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
    plain = model
    nodes = spec.nodes
    probe_error: Exception | None = None
    if nodes is None:
        is_dict, probe_error = _returns_dict(model, spec.in_channels)
        if not is_dict:
            nodes = {layer: layer for layer in spec.layers}
    if nodes is not None:
        from torchvision.models.feature_extraction import create_feature_extractor

        probe_msg = (
            f"its forward on a (1, {spec.in_channels}, {PROBE_SIZE}, {PROBE_SIZE}) zero image "
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
    if spec.stages is not None:
        # the plugin's chain over the modules of its own model (shared with the graph
        # module's), kept out of the module tree: it adds no parameters of its own
        extractor.__dict__["chain"] = tuple(spec.stages(plain))
    extractor.eval()
    extractor.requires_grad_(False)
    return extractor
