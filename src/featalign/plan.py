"""The run's plan: what one workflow run computes, decided from its validated config.

``workflow/rules/common.smk`` holds no policy of its own: it calls
:func:`load_plan` once (validation, then :func:`plan_run`) and its input functions
read the :class:`RunPlan`. Every decision about which jobs exist is made here, where
a unit test reaches it:

* every network runs on its datasets (``networks.<name>.datasets``, default all);
* each (dataset, network) pair has one alignment job per layer of the network;
* a dataset on which some network runs gets the per-dataset figures;
* the example panel shows ``figures.example_networks``, or by default the first
  network without declared invariances and the rotation-invariant network with the
  fewest declared invariances (pointwise networks are invariant to everything and
  show nothing), each at its middle layer;
* a network with a training recipe (``train=``) is trained by the ``train`` rule
  and gets a training-curve figure; its feature jobs read those weights unless the
  config names a weight file (``networks.<name>.weights``);
* the config sections a job's output depends on (its params) are stated once, with
  keys sorted, so that reordering a YAML file reruns nothing.

Output paths are not spelled here: the rules own their patterns, and
``common.smk`` expands them over the plan's wildcard values.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from featalign.config import (
    ConfigError,
    canonical,
    dataset_transforms,
    network_datasets,
    network_options,
    validate_config,
)
from featalign.plugins import NetworkSpec

__all__ = ["RunPlan", "default_example_networks", "load_plan", "plan_run"]

#: Families whose invariance makes a network the example panel's invariant counterpart.
EXAMPLE_INVARIANCES = frozenset({"rotation", "rotation90"})


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class RunPlan:
    """What one run computes. Mappings are read-only and keep config order.

    Attributes:
        datasets: every configured dataset, in config order.
        networks: network name (as configured) -> its spec, in config order.
        pairs: (dataset, network) pairs that run: each network on its datasets,
            network by network.
        layers: network -> its layers (an alignment job each, per dataset).
        figure_datasets: the datasets on which some network runs, in config order;
            each gets the per-dataset figures.
        example_networks: network -> the layer the example panel shows.
        trained: networks with a training recipe: the ``train`` rule writes their
            weights, and a training-curve figure shows the run.
        reads_trained_weights: networks whose feature jobs read the weights the
            ``train`` rule writes (a recipe, and no weight file in the config).
        weight_files: network -> the weight file the config names (an input of its
            feature jobs).
        invariances: network -> declared ``invariant_to`` (the theory's prediction).
        plugin_dirs: extra plugin folders, as configured.
        dataset_params: dataset -> the config that determines its file (sorted keys).
        network_params: network -> the options passed to its ``build()`` (sorted keys).
        alignment_params: the config that determines every alignment file (sorted keys).
    """

    datasets: tuple[str, ...]
    networks: Mapping[str, NetworkSpec]
    pairs: tuple[tuple[str, str], ...]
    layers: Mapping[str, tuple[str, ...]]
    figure_datasets: tuple[str, ...]
    example_networks: Mapping[str, str]
    trained: tuple[str, ...]
    reads_trained_weights: tuple[str, ...]
    weight_files: Mapping[str, Any]
    invariances: Mapping[str, tuple[str, ...]]
    plugin_dirs: tuple[str, ...]
    dataset_params: Mapping[str, Any]
    network_params: Mapping[str, Any]
    alignment_params: Mapping[str, Any]
    recognitions: tuple[tuple[str, str], ...] = ()  # (dataset, classifier) of each recognize job
    # dataset -> the config its recognize jobs read (``samples`` resolved for that dataset)
    recognition_params: Mapping[str, Any] | None = None
    stn: Any = None  # featalign.stn.config.StnPlan of the config's stn section, or None

    @property
    def alignments(self) -> tuple[tuple[str, str, str], ...]:
        """(dataset, network, layer) of every alignment job, pair by pair, layers in order."""
        return tuple((d, n, layer) for d, n in self.pairs for layer in self.layers[n])

    def examples_on(self, dataset: str) -> tuple[str, ...]:
        """The example panel's networks that run on ``dataset``, in panel order."""
        return tuple(n for n in self.example_networks if (dataset, n) in self.pairs)


def default_example_networks(networks: Mapping[str, NetworkSpec]) -> list[str]:
    """A generic network and an invariant counterpart, for the example panel.

    The first network that declares no invariance, and the rotation-invariant one
    (``rotation`` or ``rotation90``) that declares the fewest invariances (as specific
    as possible: pointwise networks are invariant to everything and show nothing);
    the first network when neither exists.

    Example:
        >>> from types import SimpleNamespace as S
        >>> default_example_networks({"point": S(invariant_to=("rotation", "scaling")),
        ...     "vgg": S(invariant_to=()), "d4": S(invariant_to=("rotation90",))})
        ['vgg', 'd4']
    """
    generic = [n for n, s in networks.items() if not s.invariant_to]
    invariant = sorted(
        (n for n, s in networks.items() if EXAMPLE_INVARIANCES & set(s.invariant_to)),
        key=lambda n: len(networks[n].invariant_to),
    )
    return (generic[:1] + invariant[:1]) or list(networks)[:1]


def plan_run(config: Mapping[str, Any], networks: Mapping[str, NetworkSpec]) -> RunPlan:
    """Turn a validated config and its networks into the run's plan.

    Args:
        config: the workflow config after :func:`featalign.config.validate_config`
            (defaults filled in).
        networks: {name: spec} of the configured networks, in config order (what
            ``validate_config`` returns).

    Returns:
        The plan.

    Raises:
        ConfigError: ``figures.example_networks`` names a network that is not configured.
    """
    datasets = tuple(config["datasets"])
    pairs = tuple((d, n) for n in networks for d in network_datasets(config, n))
    used = {d for d, _ in pairs}
    chosen = list(config["figures"].get("example_networks") or [])
    for n in chosen:
        if n not in networks:
            raise ConfigError(
                f"figures.example_networks: {n!r} is not a configured network; use some of "
                f"{', '.join(networks) or '(none configured)'} or add it under networks"
            )
    if not chosen:
        chosen = default_example_networks(networks)
    options = {n: network_options(config, n) for n in networks}
    trained = tuple(n for n, s in networks.items() if s.train is not None)
    return RunPlan(
        datasets=datasets,
        networks=_frozen(networks),
        pairs=pairs,
        layers=_frozen({n: tuple(s.layers) for n, s in networks.items()}),
        figure_datasets=tuple(d for d in datasets if d in used),
        example_networks=_frozen(
            {n: networks[n].layers[len(networks[n].layers) // 2] for n in chosen}
        ),
        trained=trained,
        reads_trained_weights=tuple(n for n in trained if "weights" not in options[n]),
        weight_files=_frozen({n: o["weights"] for n, o in options.items() if "weights" in o}),
        invariances=_frozen({n: tuple(s.invariant_to) for n, s in networks.items()}),
        plugin_dirs=tuple(str(d) for d in config["plugin_dirs"]),
        dataset_params=_frozen(
            {
                d: canonical(
                    {
                        "dataset": config["datasets"][d],
                        "transforms": dataset_transforms(config, d),
                        "affine_draws": config["affine_draws"],
                    }
                )
                for d in datasets
            }
        ),
        network_params=_frozen({n: canonical(o) for n, o in options.items()}),
        alignment_params=_frozen(
            canonical(
                {
                    "alignment": config["alignment"],
                    "region": config["region"],
                    "seed": config["seed"],
                }
            )
        ),
        stn=_stn_plan(config),
        **_recognition_plan(config, networks, pairs),
    )


def _recognition_plan(
    config: Mapping[str, Any], networks: Mapping[str, NetworkSpec], pairs: tuple
) -> dict[str, Any]:
    """The recognize jobs (featalign.recognition.config.recognition_networks on their datasets)."""
    from featalign.recognition.config import recognition_networks, recognition_samples

    chosen = set(recognition_networks(config, networks))
    recognitions = tuple((d, n) for d, n in pairs if n in chosen)
    section = dict(config.get("recognition") or {})

    def params(dataset: str) -> Mapping[str, Any]:
        own = {**section, "samples": recognition_samples(config, dataset)}
        return _frozen(canonical({"recognition": own, "seed": config["seed"]}))

    return {
        "recognitions": recognitions,
        "recognition_params": _frozen({d: params(d) for d, _ in recognitions}),
    }


def _stn_plan(config: Mapping[str, Any]) -> Any:
    """The STN study's plan (featalign.stn.config.plan_stn), or None without an stn section."""
    if config.get("stn") is None:
        return None
    from featalign.stn.config import plan_stn

    return plan_stn(config["stn"])


def load_plan(
    config: MutableMapping[str, Any], schema: Mapping[str, Any] | str | os.PathLike[str]
) -> RunPlan:
    """Validate a workflow config (defaults filled in, in place) and plan its run.

    What ``workflow/rules/common.smk`` runs before any job, and what the tests of
    bad configs call: :func:`featalign.config.validate_config`, then :func:`plan_run`.

    Args:
        config: the config as loaded; the schema's defaults are written into it.
        schema: the config schema, or the path of its YAML file.

    Returns:
        The run's plan.

    Raises:
        ConfigError: the first problem of the config, one sentence.
        featalign.plugins.PluginError: a plugin that fails to load.
    """
    return plan_run(config, validate_config(config, schema))
