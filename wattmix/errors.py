"""The wattmix exception hierarchy.

Everything wattmix raises on purpose derives from :class:`WattmixError`, so a caller can
catch the whole family and tell our errors from bugs.

    WattmixError
    ├── SchemaError            input does not satisfy the wire contract
    │   └── DecodeError        bytes could not be turned into a valid record (goes to dead letters)
    ├── ConfigError            a site file or setting is invalid
    ├── EngineError            the dispatch engine was asked something impossible (a bug upstream)
    ├── SinkError              the archive could not make a batch durable (retried with backoff)
    └── BrokerError            the embedded broker could not start or did not answer
"""

from __future__ import annotations


class WattmixError(Exception):
    """Base of every error wattmix raises on purpose."""


class SchemaError(WattmixError):
    """Input does not satisfy the wire contract."""


class DecodeError(SchemaError):
    """Raw bytes could not be decoded into a valid record.

    ``reason`` is a one-line, human-actionable explanation; it is stored with the original
    bytes in the dead-letter topic and table.
    """

    def __init__(self, reason: str, *, feed: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.feed = feed


class ConfigError(WattmixError):
    """A site configuration file or a setting is invalid."""


class EngineError(WattmixError):
    """The dispatch engine was called in a way that breaks its contract."""


class SinkError(WattmixError):
    """The archive could not make a batch durable."""


class BrokerError(WattmixError):
    """The embedded development broker could not be started or did not answer."""
