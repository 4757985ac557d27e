"""Value checks shared by the config sections: each raises ConfigError with the option's name."""

from __future__ import annotations

import math

from lmcli.runtime.errors import ConfigError


def finite(value: float | int) -> bool:
    """False for nan and +-inf (compared exactly, so huge ints do not overflow a float conversion)."""
    return value == value and value not in (math.inf, -math.inf)


def positive(name: str, value: float | int) -> None:
    if not (value > 0 and finite(value)):
        raise ConfigError(f"{name} must be positive, got {value}")


def non_negative(name: str, value: float | int) -> None:
    if not (value >= 0 and finite(value)):
        raise ConfigError(f"{name} must be >= 0, got {value}")


def rate(name: str, value: float) -> None:
    """A probability of dropping: in [0, 1)."""
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} '{value}' (choose from {', '.join(choices)})")
