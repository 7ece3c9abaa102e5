"""Plugin options: what a network's ``build()`` declares each option may be.

A plugin declares an option's type and bounds in ``build()``'s annotations, e.g.
``width: Annotated[int, Range(min=1)] = 16`` or ``pool: Literal["max", "mean"]``;
the workflow checks the config's values against them before any job runs
(:func:`featalign.config.check_networks`). :class:`Range` is re-exported by
:mod:`featalign.plugins`, the one module a plugin imports.
"""

from __future__ import annotations

import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

if TYPE_CHECKING:
    from featalign.plugins import NetworkSpec

__all__ = ["Range", "declared_options", "describe_annotation", "option_problem"]


def _number(x: float) -> str:
    """A bound as written: ``1`` rather than ``1.0``."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True, repr=False)
class Range:
    """Bounds of a numeric option of ``build()``, declared in its annotation.

    ``width: Annotated[int, Range(min=1)] = 16`` takes integers >= 1;
    ``sigma: Annotated[float, Range(above=0)] = 1.0`` numbers > 0;
    ``orientations: Annotated[int, Range(min=4, step=4)] = 8`` 4, 8, 12, …;
    ``kernel_size: Annotated[int, Range(min=1, step=2)] = 7`` odd integers.

    Attributes:
        min: smallest allowed value (inclusive), or None.
        max: largest allowed value (inclusive), or None.
        above: values must be larger than this (exclusive), or None.
        below: values must be smaller than this (exclusive), or None.
        step: with ``min``: the value is ``min + k * step`` for an integer k >= 0.

    Example:
        >>> Range(min=1).contains(0), Range(min=4, step=4).describe()
        (False, 'among 4, 8, 12, …')
    """

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    step: float | None = None

    def __post_init__(self) -> None:
        bounds = (self.min, self.max, self.above, self.below, self.step)
        if all(b is None for b in bounds):
            raise TypeError("Range() needs a bound: min, max, above, below or step")
        if any(b is not None and (isinstance(b, bool) or not isinstance(b, (int, float))
                                  or not math.isfinite(b)) for b in bounds):
            raise TypeError(f"Range bounds must be finite numbers, got {self}")
        if self.step is not None and (self.min is None or self.step <= 0):
            raise TypeError(f"Range(step=...) needs min and a positive step, got {self}")

    def __repr__(self) -> str:
        bounds = ("min", "max", "above", "below", "step")
        given = (f"{b}={getattr(self, b)!r}" for b in bounds if getattr(self, b) is not None)
        return f"Range({', '.join(given)})"

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        v = float(value)
        if math.isnan(v):
            return False
        if self.min is not None and v < self.min:
            return False
        if self.max is not None and v > self.max:
            return False
        if self.above is not None and v <= self.above:
            return False
        if self.below is not None and v >= self.below:
            return False
        if self.step is not None:
            k = (v - float(self.min)) / self.step  # type: ignore[arg-type]
            return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))
        return True

    def describe(self) -> str:
        """The bounds in words: ``>= 1``, ``> 0 and < 1``, ``among 1, 3, 5, …``."""
        parts = []
        if self.step is not None:
            first = [_number(self.min + k * self.step) for k in range(3)]  # type: ignore[operator]
            parts.append(f"among {', '.join(first)}, …")
        elif self.min is not None:
            parts.append(f">= {_number(self.min)}")
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        if self.below is not None:
            parts.append(f"< {_number(self.below)}")
        if self.max is not None:
            parts.append(f"<= {_number(self.max)}")
        return " and ".join(parts)


#: A test of a config value and what it should be, in words ("an integer >= 1").
_Expectation = tuple[Callable[[Any], bool], str]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expectation(tp: Any) -> _Expectation | None:
    """What an annotation asks of a config value, or None where featalign cannot tell."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        ranges = [m for m in tp.__metadata__ if isinstance(m, Range)]
        base = _expectation(args[0])
        if not ranges:
            return base
        test, phrase = base or (_is_number, "a number")

        def within(v: Any) -> bool:  # None passes the bounds (``int | None`` allows it)
            return test(v) and (v is None or (_is_number(v) and all(r.contains(v) for r in ranges)))

        return within, " ".join([phrase, *(r.describe() for r in ranges)])
    if tp is type(None) or tp is None:
        return (lambda v: v is None), "null"
    if tp is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if tp is int:
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"
    if tp is float:
        return (lambda v: _is_number(v) and math.isfinite(v)), "a finite number"
    if tp is str:
        return (lambda v: isinstance(v, str)), "a string"
    if origin is None and inspect.isclass(tp) and (issubclass(tp, PurePath) or tp is os.PathLike):
        return (lambda v: isinstance(v, str)), "a path"
    if origin is Literal:
        return (
            (lambda v: any(v == a and type(v) is type(a) for a in args)),
            "one of " + ", ".join(repr(a) for a in args),
        )
    if origin is Union or origin is types.UnionType:
        members = [_expectation(a) for a in args]
        if any(m is None for m in members):
            return None
        phrases = list(dict.fromkeys(p for _, p in members))  # type: ignore[misc]
        if "a path" in phrases and "a string" in phrases:  # str | Path: a path, written as text
            phrases.remove("a string")
        return (lambda v: any(t(v) for t, _ in members)), " or ".join(phrases)  # type: ignore[misc]
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple
            items = [_expectation(a) for a in args]
            if any(i is None for i in items):
                return None
            return (
                (lambda v: isinstance(v, (list, tuple)) and len(v) == len(items)
                 and all(t(x) for (t, _), x in zip(items, v))),  # type: ignore[misc]
                f"a list of {len(items)}: " + ", ".join(p for _, p in items),  # type: ignore[misc]
            )
        item = _expectation(args[0]) if args else None
        if item is None:
            return (lambda v: isinstance(v, (list, tuple))), "a list"
        return (
            (lambda v: isinstance(v, (list, tuple)) and all(item[0](x) for x in v)),
            f"a list, each item {item[1]}",
        )
    return None


def describe_annotation(annotation: Any) -> str | None:
    """What an option's annotation asks of a config value, in words; None if unchecked.

    Example:
        >>> describe_annotation(Annotated[int, Range(min=1)])
        'an integer >= 1'
    """
    found = _expectation(annotation)
    return None if found is None else found[1]


def option_problem(annotation: Any, value: Any) -> str | None:
    """What ``value`` should be instead, when it does not fit ``annotation``; else None.

    Understood: ``int`` (not ``bool``), ``float`` (any finite number), ``bool``,
    ``str``, paths (strings), ``Literal[...]``, unions such as ``int | None``, lists
    and tuples, and :class:`Range` bounds in ``typing.Annotated``. Any other
    annotation (or none) accepts every value.

    Example:
        >>> option_problem(Annotated[int, Range(min=1)], -3)
        'an integer >= 1'
        >>> option_problem(Literal["max", "mean"], "max") is None
        True
    """
    found = _expectation(annotation)
    if found is None or found[0](value):
        return None
    return found[1]


def _annotations(fn: Callable[..., Any]) -> dict[str, Any]:
    """Evaluated annotations of ``fn`` (``Annotated`` kept); an annotation that cannot be
    evaluated (a name imported only for type checkers) counts as none."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # one bad annotation: evaluate the others one by one
        pass
    target = inspect.unwrap(fn)
    namespace = dict(getattr(target, "__globals__", {}))
    out: dict[str, Any] = {}
    for name, ann in getattr(fn, "__annotations__", {}).items():
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # noqa: S307 -- the plugin's own annotation
            except Exception:
                continue
        out[name] = ann
    return out


def declared_options(spec: NetworkSpec) -> tuple[dict[str, inspect.Parameter], bool]:
    """The options a network takes: its keyword parameters, annotations evaluated.

    The keyword parameters of ``build()``; when ``build()`` also takes ``**options``
    and the network has a training recipe, those of ``train()`` besides its first
    (the output path): the workflow passes a network's options to both.

    Returns:
        (name -> parameter (annotation evaluated, ``typing.Any`` where there is none),
        and whether other names are taken too: ``**options`` that no signature resolves).
    """
    named: dict[str, inspect.Parameter] = {}
    takes_more = True
    for fn, skip in ((spec.build, 0), (spec.train, 1)):
        if fn is None or not takes_more:
            continue
        try:
            params = list(inspect.signature(fn).parameters.values())[skip:]
        except (TypeError, ValueError):  # a builtin or C callable: takes anything
            return named, True
        hints = _annotations(fn)
        takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        for p in params:
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          inspect.Parameter.KEYWORD_ONLY):
                named.setdefault(p.name, p.replace(annotation=hints.get(p.name, Any)))
    return named, takes_more
