"""KEY=VALUE settings (`sync --knob`, `serve --param`, `--megatron tp=2,pp=4`), typed from what they set.

One parser, one set of rules, wherever a user writes KEY=VALUE: a key must be one the target takes (the fields
of a strategy's `Knobs` dataclass, the parameters of a KV policy), a key given twice is an error, and a value
is read as the type of the setting's default (or annotation): `true`/`false` for switches, a whole number for
counts, a finite number for costs and fractions (a size such as `512MiB` too when the name ends in `bytes`, a
time such as `20us` or `1.5ms` when it ends in `_s`), text for names. So `bucket_bytes=1e9` and
`prefetch_depth=2` mean the same in every command, and a typo is an error naming the setting instead of a
silently different run. Ranges (> 0, a fraction) stay with the owner.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fabricsim.errors import FabricsimError
from fabricsim.simcore.errors import ScenarioError
from fabricsim.simcore.units import MAX_BYTES, MAX_SECONDS, parse_bytes, parse_seconds, real_number

from .errors import WorkloadError

_NO_DEFAULT = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Setting:
    """One settable name: its default (`_NO_DEFAULT` if required) and its annotation as written."""

    name: str
    default: Any = _NO_DEFAULT
    annotation: str = ""


def settings_of(target: Any) -> dict[str, Setting]:
    """The settings a dataclass (its fields) or a callable/class (its keyword parameters) takes."""
    if dataclasses.is_dataclass(target):
        return {f.name: Setting(f.name, f.default if f.default is not dataclasses.MISSING else _NO_DEFAULT,
                                str(f.type)) for f in dataclasses.fields(target)}
    fn = target.__init__ if inspect.isclass(target) else target
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        out[p.name] = Setting(p.name, p.default, "" if ann is _NO_DEFAULT else str(ann))
    return out


def split_key_value(text: str, what: str = "setting", example: str = "KEY=VALUE") -> tuple[str, str]:
    """'KEY=VALUE' -> ('KEY', 'VALUE'), both stripped; the error says what was expected."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise WorkloadError(f"{what} {text!r}: write KEY=VALUE, e.g. {example}")
    return key, raw


def _kind(setting: Setting) -> str:
    """'bool', 'int', 'float' or 'str': the default's type, else the annotation's."""
    d = setting.default
    if isinstance(d, bool):
        return "bool"
    if isinstance(d, int):
        return "int"
    if isinstance(d, float):
        return "float"
    if isinstance(d, str):
        return "str"
    ann = setting.annotation
    for kind in ("bool", "int", "float", "str"):
        if kind in ann:
            return kind
    return "str"


def coerce(where: str, setting: Setting, value: Any) -> Any:
    """`value` (text from a command line, or a Python value from the API) as the setting's type."""
    kind = _kind(setting)
    optional = setting.default is None or "None" in setting.annotation
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise WorkloadError(f"{where}: expected true or false, got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise WorkloadError(f"{where}: expected a name, got {value!r}")
    x = _number(where, setting.name, value)
    if kind == "int":
        if x != int(x):
            raise WorkloadError(f"{where}: expected a whole number, got {value!r}")
        return int(x)
    return float(x)


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise WorkloadError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            x = float(text)
        except ValueError:
            # a size or a duration with its unit ('512MiB', '20us'), read by the one parser of each
            parse = parse_bytes if name.endswith("bytes") else parse_seconds if name.endswith("_s") else None
            if parse is None:
                raise WorkloadError(f"{where}: expected a number, got {value!r}") from None
            try:
                x = float(parse(text, where))
            except FabricsimError as exc:  # the parser's own one-line message, as this layer's error
                raise WorkloadError(str(exc)) from None
    else:  # a number by `simcore.units.real_number`'s rule (NumPy scalars yes, nothing past a float's range)
        try:
            x = float(real_number(value, where))
        except ScenarioError as exc:
            raise WorkloadError(str(exc)) from None
    if not math.isfinite(x):
        raise WorkloadError(f"{where}: expected a finite number, got {value!r}")
    if name.endswith("bytes") and x > MAX_BYTES:  # the bound a size written with a unit has (parse_bytes)
        raise WorkloadError(f"{where}: size {value!r} is beyond 1 EiB, more than any machine holds (check the unit)")
    if name.endswith("_s") and x > MAX_SECONDS:  # the bound a duration has (parse_seconds): a cost of 1e300 s
        # surfaced as some copy's "time beyond 10^9 s", naming the copy, not the setting
        raise WorkloadError(f"{where}: {value!r} s is beyond 10^9 s (31 years); check the unit")
    return x


def coerce_all(values: Mapping[str, Any], settings: Mapping[str, Setting], owner: str,
               error: type[WorkloadError] = WorkloadError, noun: str = "setting") -> dict[str, Any]:
    """Check every key against `settings` and convert every value; `owner` names the target in errors and
    `noun` what its settings are called there (knob, parameter)."""
    bad = sorted(set(values) - set(settings))
    if bad:
        known = ", ".join(sorted(settings)) or "none"
        raise error(f"unknown {noun}{'s' if len(bad) > 1 else ''} {', '.join(bad)} for {owner} (known: {known})")
    try:
        return {k: coerce(f"{owner}: {k}", settings[k], v) for k, v in values.items()}
    except WorkloadError as exc:
        raise error(str(exc)) from None


def split_all(items: Iterable[str], *, what: str = "setting", example: str = "KEY=VALUE",
              error: type[WorkloadError] = WorkloadError) -> dict[str, str]:
    """`['a=1', 'b=true']` -> `{'a': '1', 'b': 'true'}` (still text: the owner types them with `coerce_all`);
    a key given twice is an error."""
    raw: dict[str, str] = {}
    for item in items:
        try:
            key, value = split_key_value(item, what, example)
        except WorkloadError as exc:
            raise error(str(exc)) from None
        if key in raw:
            raise error(f"{what} {key} given twice ({key}={raw[key]} and {key}={value})")
        raw[key] = value
    return raw


def parse_key_values(items: Iterable[str], settings: Mapping[str, Setting], owner: str, *,
                     what: str = "setting", example: str = "KEY=VALUE",
                     error: type[WorkloadError] = WorkloadError) -> dict[str, Any]:
    """`['a=1', 'b=true']` -> `{'a': 1, 'b': True}`, typed from `settings`."""
    return coerce_all(split_all(items, what=what, example=example, error=error), settings, owner, error, what)
