"""The one way from a command's options to its config: a table per command, checked against the config's fields.

A command keeps its options as explicit Typer parameters (their help is the CLI's documentation) and declares a
`Binding` with `bind`, from the config dataclasses that its options fill:

- each field of those sections is set by the option of the same name, except the fields named in `aliases` (set
  by the option given there) and in `internal` (set by no option: e.g. the vocabulary size, read from the data
  dir);
- each other parameter of the command is named in `extras` (paths, --restart, --json, ...).

`bind` checks this when the command's module is imported: a field with no option, an option with no field, two
fields on one option, or a parameter that is neither an option of a field nor an extra stops the import with the
mismatch named. So a new config field cannot silently take the value of an unrelated parameter with its name (that
parameter is an extra, and the clash is refused), and a new option cannot be forgotten on the way to the config.

Every command then calls `overrides(BINDING, given(ctx))`: `{section: {field: value}}` of the options that were
given (on the command line, in LMCLI_<COMMAND>_<OPTION> or in --config). An option left at its default is absent,
so the section's default, or a resumed run's saved value, stands.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Optional

import typer
from typer._click.core import ParameterSource  # typer vendors click (pinned <0.30)


@dataclass(frozen=True)
class Binding:
    """One command's table: each option (its parameter's name) -> the (section, field) it sets."""

    options: Mapping[str, tuple[str, str]]
    extras: frozenset[str]  # the command's parameters that set no field


def bind(command: Callable, sections: Mapping[str, type], *, aliases: Optional[Mapping[tuple[str, str], str]] = None,
         internal: tuple[tuple[str, str], ...] = (), extras: tuple[str, ...] = ()) -> Binding:
    """The checked table of `command`'s options for the dataclasses `sections` ({section name: class}).

    Raises:
        TypeError: naming every mismatch between the fields, the options and the command's parameters.
    """
    aliases = aliases or {}
    known = {(section, f.name) for section, cls in sections.items() for f in fields(cls)}
    problems = [f"{s}.{f} in {what} is not a field" for what, names in (("aliases", aliases), ("internal", internal))
                for s, f in names if (s, f) not in known]
    options: dict[str, tuple[str, str]] = {}
    for section, field in sorted(known - set(internal)):
        option = aliases.get((section, field), field)
        if option in options:
            problems.append(f"option {option} would set both {'.'.join(options[option])} and {section}.{field}")
        options[option] = (section, field)
    parameters = set(inspect.signature(command).parameters)
    problems += [f"field {s}.{f} has no option {o}" for o, (s, f) in options.items() if o not in parameters]
    problems += [f"option {o} is also listed as an extra" for o in options if o in extras]
    problems += [f"parameter {p} sets no field and is not an extra" for p in parameters - set(options) - set(extras)]
    problems += [f"extra {p} is not a parameter" for p in set(extras) - parameters]
    if problems:
        raise TypeError(f"the options of {command.__name__} do not match its config: {'; '.join(sorted(problems))}")
    return Binding(options, frozenset(extras))


def given(ctx: typer.Context) -> dict[str, Any]:
    """The values of `ctx`'s parameters that were given (command line, environment or --config), by name."""
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}


def overrides(binding: Binding, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{section: {field: value}}` of the options in `values` ({parameter name: value}); extras are left out.

    Paths become strings: a config holds what its JSON holds.
    """
    out: dict[str, dict[str, Any]] = {section: {} for section, _ in binding.options.values()}
    for option, (section, field) in binding.options.items():
        if option in values:
            value = values[option]
            out[section][field] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return out
