"""Typed config sections: a field with its range and documentation, and the validation they share.

A section is a plain dataclass whose fields are made with ``setting(...)``; ``build_section``
turns a mapping (as read from YAML) into one, rejecting unknown keys, wrong types and
out-of-range values with the dotted key named. The run config (``derd.config``) assembles
its own sections and each registered method's (``derd.methods``) from these.

A field may also declare the range a search draws it from (``search=loguniform(0.005, 50)``,
``uniform``, ``integer``, ``categorical``), written once next to its default: every search
space that takes the methods' declared ranges (``ranges: declared``, ``tuning.space``) searches
it there, and a dataset's space file lists only the ranges it changes.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field
from typing import Any, Callable

from derd.errors import UserError


class ConfigError(UserError):
    """A bad config value or key; the message names the dotted key."""


Choices = typing.Union[tuple, Callable[[], typing.Sequence[str]]]


SEED_MAX = 2**32 - 1  # numpy's and CUDA's seeds are 32-bit; torch's generator takes these too
LR_MAX = 10.0  # learning rates
WEIGHT_MAX = 1e6  # loss weights (ZSKT's attention weight is 250)
TEMPERATURE_MAX = 100.0


DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")


@dataclasses.dataclass(frozen=True)
class SearchRange:
    """The distribution a search draws one config key from (Optuna's: ``tuning.space.Param``)."""

    distribution: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def contains(self, value: Any) -> bool:
        if self.distribution == "categorical":
            return value in self.choices
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high
        )


def loguniform(low: float, high: float) -> SearchRange:
    """Log-uniform on [low, high] (loss weights, learning rates: decades around a published value)."""
    return SearchRange("loguniform", low, high)


def uniform(low: float, high: float) -> SearchRange:
    return SearchRange("uniform", low, high)


def integer(low: int, high: int) -> SearchRange:
    return SearchRange("int", low, high)


def categorical(*choices: Any) -> SearchRange:
    return SearchRange("categorical", choices=tuple(choices))


def setting(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    choices: Choices = (),
    doc: str = "",
    search: SearchRange | None = None,
) -> Any:
    """A config field with its range or choices (checked by ``build_section``), a line of documentation and,
    if a search should tune it, the range it draws from (``search``; inside [lo, hi]).

    A numeric field has a finite range: both ``lo`` and ``hi`` (a value past it is refused with the
    key named, before a run allocates anything). ``choices`` may be a function returning the names
    of a registry (methods, datasets), so that a name registered later is accepted.
    """
    if (lo is None) != (hi is None) or (
        isinstance(default, (int, float)) and not isinstance(default, bool) and lo is None
    ):
        raise TypeError(
            f"setting({default!r}, lo={lo!r}, hi={hi!r}): a numeric setting needs a finite range, both lo "
            f"and hi (e.g. hi=derd.settings.WEIGHT_MAX for a loss weight, LR_MAX for a learning rate)"
        )
    if (
        search is not None
        and search.distribution != "categorical"
        and lo is not None
        and not (
            lo <= search.low < search.high <= hi and (search.distribution != "loguniform" or search.low > 0)
        )
    ):
        raise TypeError(
            f"setting({default!r}): its search range [{search.low}, {search.high}] must lie inside "
            f"[{lo}, {hi}], low below high (and above 0 for a log range)"
        )
    return field(
        default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc, "search": search}
    )


def declared_ranges(sections: dict[str, type]) -> dict[str, SearchRange]:
    """Dotted key -> the range its field declares (``setting(search=...)``), over ``sections`` in order."""
    return {
        f"{name}.{f.name}": f.metadata["search"]
        for name, cls in sections.items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("search") is not None
    }


def as_number(value: Any) -> Any:
    """A string that spells a number becomes that number (YAML 1.1 reads ``1e-5`` as a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def allowed_choices(f: dataclasses.Field) -> tuple:
    choices = f.metadata.get("choices") or ()
    return tuple(choices()) if callable(choices) else tuple(choices)


def check_value(key: str, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """``value`` for field ``f`` (type ``hint``) of dotted ``key``, converted where lossless, or ConfigError."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: must not be empty")
    if base is float and not isinstance(value, bool):
        value = float(value) if isinstance(value, int) else as_number(value)
    if base is dict and isinstance(value, dict):
        return value
    if not isinstance(value, base) or (base in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    if base is float and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number; give a value in [{meta_range(f)}]")
    choices = allowed_choices(f)
    meta = f.metadata
    if choices and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise ConfigError(f"{key}: {value!r} is below its minimum {show(meta['lo'])}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise ConfigError(f"{key}: {value!r} is above its maximum {show(meta['hi'])}")
    return value


def show(bound: float) -> str:
    """A range's end as a message writes it: integers in full (4294967295), reals short (1e-12)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def meta_range(f: dataclasses.Field) -> str:
    """``lo, hi`` of a numeric field, as the error messages show it."""
    return f"{show(f.metadata.get('lo'))}, {show(f.metadata.get('hi'))}"


def check_flag(value: float | None, flag: str, lo: float, hi: float) -> None:
    """A numeric command-line flag within [lo, hi] (None: not given), or one line naming it."""
    if value is not None and not lo <= value <= hi:
        raise UserError(f"{flag} {value}: must be in [{show(lo)}, {show(hi)}]")


def build_section(cls: type, data: Any, prefix: str) -> Any:
    """An instance of section dataclass ``cls`` from a mapping; missing keys take their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key; known keys here: {', '.join(fields)}")
    return cls(
        **{
            name: check_value(f"{prefix}{name}", f, hints[name], data[name])
            for name, f in fields.items()
            if name in data
        }
    )


def section_values(section: Any) -> dict[str, Any]:
    """A section's values by field name, in declaration order."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
