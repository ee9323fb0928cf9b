"""Finds channel adapters through the ``notifier.adapters`` entry-point group.

The core knows no adapter by name: whatever is installed and registered is listed,
and settings choose which adapters serve each channel and in what order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import SecretStr, ValidationError

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


def describe_adapter(adapter_class: Any) -> dict[str, Any]:
    """An adapter's self-description; secret fields show their type, never a value."""
    settings = []
    for name, field in adapter_class.settings_model.model_fields.items():
        annotation = field.annotation
        secret = "Secret" in str(annotation) or annotation is SecretStr
        default = (
            None if field.is_required() or secret else field.get_default(call_default_factory=True)
        )
        settings.append(
            {
                "name": name,
                "type": getattr(annotation, "__name__", str(annotation)).replace("typing.", ""),
                "required": field.is_required(),
                "default": default
                if isinstance(default, str | int | float | bool | None)
                else str(default),
                "secret": secret,
                "description": field.description or "",
            }
        )
    return {
        "name": adapter_class.name,
        "channel": adapter_class.channel,
        "description": adapter_class.description,
        "module": adapter_class.__module__,
        "recipient": str(adapter_class.recipient_kind),
        "template_parts": [p.name for p in adapter_class.template_parts],
        "settings": settings,
    }


class Registry:
    """The channels this deployment serves and the providers behind each, in order."""

    def __init__(
        self, channels: dict[str, list[Provider]], disabled: dict[str, str] | None = None
    ) -> None:
        self.channels = channels
        self.disabled = disabled or {}

    @classmethod
    def from_settings(
        cls, settings: Settings, installed: dict[str, AdapterClass] | None = None
    ) -> Registry:
        """Enable channels from settings.

        A channel listed in ``NOTIFIER_CHANNELS__<CHANNEL>__PROVIDERS`` uses those
        adapters in that order, and any problem with them stops start-up. A channel not
        listed is enabled when exactly one adapter serves it and its settings (given or
        default) are valid; otherwise it stays off, with the reason in ``disabled``.
        """
        installed = discover() if installed is None else installed
        problems: list[str] = []
        by_channel: dict[str, list[AdapterClass]] = {}
        for adapter_class in installed.values():
            by_channel.setdefault(adapter_class.channel, []).append(adapter_class)

        channels: dict[str, list[Provider]] = {}
        disabled: dict[str, str] = {}
        for channel in sorted(set(by_channel) | set(settings.channels)):
            config = settings.channels.get(channel)
            if config is not None and not config.enabled:
                disabled[channel] = "disabled in settings"
                continue
            if config is not None and config.providers:
                providers = []
                for name in config.providers:
                    chosen = installed.get(name)
                    if chosen is None or chosen.channel != channel:
                        problems.append(
                            f"NOTIFIER_CHANNELS__{channel.upper()}__PROVIDERS: no installed "
                            f"adapter {name!r} for channel {channel!r}"
                        )
                        continue
                    provider = _provider(chosen, settings, problems)
                    if provider is not None:
                        providers.append(provider)
                channels[channel] = providers
                continue
            candidates = by_channel.get(channel, [])
            if len(candidates) != 1:
                names = ", ".join(sorted(a.name for a in candidates)) or "none installed"
                disabled[channel] = (
                    f"set NOTIFIER_CHANNELS__{channel.upper()}__PROVIDERS to choose and order "
                    f"its adapters ({names})"
                )
                continue
            [only] = candidates
            if only.name in settings.adapters:
                provider = _provider(only, settings, problems)
                if provider is not None:
                    channels[channel] = [provider]
                continue
            try:
                channels[channel] = [Provider(only, only.settings_model.model_validate({}))]
            except ValidationError:
                disabled[channel] = (
                    f"adapter {only.name!r} needs settings (NOTIFIER_ADAPTERS__"
                    f"{only.name.upper()}__...; see `notifier adapters`)"
                )
        unknown = set(settings.adapters) - set(installed)
        problems.extend(
            f"NOTIFIER_ADAPTERS__{name.upper()}: no adapter named {name!r} is installed"
            for name in sorted(unknown)
        )
        if problems:
            raise SettingsError(problems)
        return cls(channels, disabled)

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


def _provider(
    adapter_class: AdapterClass, settings: Settings, problems: list[str]
) -> Provider | None:
    try:
        return Provider(
            adapter_class,
            adapter_class.settings_model.model_validate(
                settings.adapters.get(adapter_class.name, {})
            ),
        )
    except ValidationError as exc:
        problems.extend(_settings_problems(adapter_class.name, exc))
        return None


def _settings_problems(adapter: str, exc: ValidationError) -> list[str]:
    return [
        f"NOTIFIER_ADAPTERS__{adapter.upper()}__"
        + "__".join(str(p).upper() for p in error["loc"])
        + f": {error['msg']}"
        for error in exc.errors()
    ]
