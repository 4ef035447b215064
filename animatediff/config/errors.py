"""The one error type of configuration, and the check every section's validation uses."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the option."""


def check(condition: bool, option: str, message: str) -> None:
    """Raise ``ConfigError("<option>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{option}: {message}")
