"""Finds channel adapters through the ``notifier.adapters`` entry-point group.

The core knows no adapter by name: whatever is installed and registered is listed,
and settings choose which adapters serve each channel and in what order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from notifier.adapter import Adapter, AdapterSettings
from notifier.settings import Settings, SettingsError

ENTRY_POINT_GROUP = "notifier.adapters"

AdapterClass = type[Adapter[Any]]


@dataclass(frozen=True)
class Provider:
    """An installed adapter, enabled for a channel, with its validated settings."""

    adapter_class: AdapterClass
    settings: AdapterSettings

    @property
    def name(self) -> str:
        return self.adapter_class.name


def discover() -> dict[str, AdapterClass]:
    """Every installed adapter class, by its declared name."""
    found: dict[str, AdapterClass] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        adapter_class = entry.load()
        if not (isinstance(adapter_class, type) and issubclass(adapter_class, Adapter)):
            raise TypeError(f"entry point {entry.name!r} is not an Adapter subclass")
        if adapter_class.name in found:
            raise TypeError(f"two installed adapters are named {adapter_class.name!r}")
        found[adapter_class.name] = adapter_class
    return found


class Registry:
    """The channels this deployment serves and the providers behind each, in order."""

    def __init__(self, channels: dict[str, list[Provider]]) -> None:
        self.channels = channels

    @classmethod
    def from_settings(
        cls, settings: Settings, installed: dict[str, AdapterClass] | None = None
    ) -> Registry:
        installed = discover() if installed is None else installed
        problems: list[str] = []
        by_channel: dict[str, list[AdapterClass]] = {}
        for adapter_class in installed.values():
            by_channel.setdefault(adapter_class.channel, []).append(adapter_class)

        channels: dict[str, list[Provider]] = {}
        for channel in sorted(set(by_channel) | set(settings.channels)):
            config = settings.channels.get(channel)
            if config is not None and not config.enabled:
                continue
            names = list(config.providers) if config and config.providers else None
            if names is None:
                if len(by_channel.get(channel, [])) != 1:
                    # Several gateways for one channel: the order must be chosen explicitly.
                    if channel in by_channel:
                        options = ", ".join(sorted(a.name for a in by_channel[channel]))
                        problems.append(
                            f"NOTIFIER_CHANNELS__{channel.upper()}__PROVIDERS: choose and order "
                            f"the providers for channel {channel!r} from: {options}"
                        )
                    continue
                names = [by_channel[channel][0].name]
            providers = []
            for name in names:
                chosen = installed.get(name)
                if chosen is None or chosen.channel != channel:
                    problems.append(
                        f"NOTIFIER_CHANNELS__{channel.upper()}__PROVIDERS: no installed adapter "
                        f"{name!r} for channel {channel!r}"
                    )
                    continue
                try:
                    adapter_settings = chosen.settings_model.model_validate(
                        settings.adapters.get(name, {})
                    )
                except ValidationError as exc:
                    problems.extend(_settings_problems(name, exc))
                    continue
                providers.append(Provider(chosen, adapter_settings))
            if providers:
                channels[channel] = providers
        unknown = set(settings.adapters) - set(installed)
        problems.extend(
            f"NOTIFIER_ADAPTERS__{name.upper()}: no adapter named {name!r} is installed"
            for name in sorted(unknown)
        )
        if problems:
            raise SettingsError(problems)
        return cls(channels)

    def providers(self, channel: str) -> list[Provider]:
        return self.channels[channel]

    def provider(self, channel: str, name: str) -> Provider:
        for provider in self.channels[channel]:
            if provider.name == name:
                return provider
        raise KeyError(f"provider {name!r} is not enabled for channel {channel!r}")

    def all_providers(self) -> Iterable[Provider]:
        for providers in self.channels.values():
            yield from providers


def _settings_problems(adapter: str, exc: ValidationError) -> list[str]:
    return [
        f"NOTIFIER_ADAPTERS__{adapter.upper()}__"
        + "__".join(str(p).upper() for p in error["loc"])
        + f": {error['msg']}"
        for error in exc.errors()
    ]
