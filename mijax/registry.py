"""Registries of named things with typed options: the data sets (:mod:`mijax.data`) and the models
(:mod:`mijax.models`) are each one :class:`Registry`.

An entry is a name, a factory and its options' defaults, which are also the only options it takes. A run
names an entry and gives some options, as Python values or as the text of ``--data-option`` /
``--model-option``; :meth:`Registry.resolve` checks each against, and converts it to, its default's type
(:func:`typed_option`), so a configuration holds the same values however they were given.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from typing import Any, Callable, Mapping, Optional

from mijax.errors import MijaxError


def frozen(value: Any) -> Any:
    """Lists (as JSON gives them back) as tuples, recursively: options compare equal after a round trip."""
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


TRUE_WORDS = ("true", "True", "yes", "1")
FALSE_WORDS = ("false", "False", "no", "0")


def option_text(value: Any) -> str:
    """An option's value as ``--model-option`` / ``--data-option`` take it: ``true``, ``0.05``, ``[1,2,3]``, ``xla``."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    return json.dumps(value, separators=(",", ":"))


def typed_option(owner: str, key: str, value: Any, default: Any, noun: str = "option") -> Any:
    """``value`` of option ``key`` of ``owner`` (e.g. ``model 'mlp'``) checked against, and converted to, the type of
    its ``default``: a bool takes a bool or one of ``TRUE_WORDS`` / ``FALSE_WORDS`` (or the integers 1 and 0), an int
    an integer, a float a finite number, a tuple a list or comma-separated numbers, a mapping a mapping (a JSON
    object), a text text; a default of None takes anything. Anything else raises MijaxError naming the option (as
    ``{owner} {noun} {key}``) and what it takes."""
    where = f"{owner} {noun} {key}"
    if default is None:
        return frozen(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            text = str(value)
            if text in TRUE_WORDS:
                return True
            if text in FALSE_WORDS:
                return False
        raise MijaxError(f"{where} is true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), "
                         f"got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MijaxError(f"{where} is an integer like {default}, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise MijaxError(f"{where} is a finite number like {default:g}, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            try:
                value = tuple(json.loads(part) for part in value.replace(" ", "").split(",") if part)
            except ValueError:
                raise MijaxError(f"{where} is a list like {option_text(default)}, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            raise MijaxError(f"{where} is a list like {option_text(default) or '[]'}, got {value!r}")
        if default and all(isinstance(d, float) for d in default):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise MijaxError(f"{where} is a list of finite numbers like {option_text(default)}, got {value!r}")
            return tuple(float(v) for v in value)
        return frozen(value)
    if isinstance(default, str):
        if isinstance(value, (str, os.PathLike)):
            return value
        raise MijaxError(f"{where} is text like {default!r}, got {value!r}")
    if isinstance(default, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise MijaxError(f"{where} is a mapping like {option_text(dict(default))}, got {value!r}")
    return frozen(value)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered thing: its name, how to build it, its options' defaults, a one-line summary, and what else
    its registry keeps of it (``extra``, read as attributes too: a data set's ``entry.n_train``)."""

    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Any]
    summary: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


class Registry:
    """Named entries of one kind (``kind``: ``"data set"``, ``"model"``), in the order registered; ``builtin``
    names the modules that register the built-in entries, imported when the registry is first read."""

    def __init__(self, kind: str, builtin: tuple[str, ...] = ()):
        self.kind = kind
        self._builtin = builtin
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: Callable[..., Any], summary: str = "",
                 extra: Optional[Mapping[str, Any]] = None, **options: Any) -> Entry:
        """Register ``name``: ``factory(..., **options)`` builds it; ``options`` are the defaults (and the only
        options it takes). Registering a name again replaces the entry."""
        self._entries[name] = Entry(name, factory, dict(options), summary, dict(extra or {}))
        return self._entries[name]

    def _load(self) -> None:
        for module in self._builtin:
            importlib.import_module(module)

    def names(self) -> list[str]:
        """The registered names, built-in first."""
        self._load()
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name raises MijaxError listing the known ones."""
        self._load()
        if name not in self._entries:
            raise MijaxError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")
        return self._entries[name]

    def resolve(self, name: str, options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """Every option of ``name``: the given ones over the defaults, each of its default's type
        (:func:`typed_option`); unknown options and values of another type raise MijaxError."""
        defaults = self.entry(name).options
        options = dict(options or {})
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            known = ", ".join(defaults) or "none"
            raise MijaxError(f"{self.kind} {name!r} has no option {unknown[0]!r} (its options: {known})")
        owner = f"{self.kind} {name!r}"
        return {key: typed_option(owner, key, options[key], default) if key in options else frozen(default)
                for key, default in defaults.items()}

    def make(self, name: str, options: Optional[Mapping[str, Any]] = None, *args: Any) -> Any:
        """``factory(*args, **resolved options)`` of ``name``; a factory's ValueError or TypeError becomes one
        line of MijaxError naming the entry."""
        resolved = self.resolve(name, options)
        try:
            return self.entry(name).factory(*args, **resolved)
        except (ValueError, TypeError) as e:
            raise MijaxError(f"{self.kind} {name!r}: {str(e).splitlines()[0]}") from None
