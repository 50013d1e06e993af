"""Kafka connection security (SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512, TLS) from configuration.

Read from the environment (a password never goes on a command line, where ``ps`` shows it)::

    WATTMIX_KAFKA_SECURITY_PROTOCOL   PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
                                      (default: derived: SASL_* if a mechanism is set, *_SSL if
                                      any WATTMIX_KAFKA_SSL_* is set, else PLAINTEXT)
    WATTMIX_KAFKA_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    WATTMIX_KAFKA_USERNAME
    WATTMIX_KAFKA_PASSWORD            (or WATTMIX_KAFKA_PASSWORD_FILE: first line of that file)
    WATTMIX_KAFKA_SSL_CAFILE          CA bundle to verify the broker (default: system CAs)
    WATTMIX_KAFKA_SSL_CERTFILE / WATTMIX_KAFKA_SSL_KEYFILE   client certificate (mutual TLS)
    WATTMIX_KAFKA_SSL_CHECK_HOSTNAME  1 (default) | 0

The same :class:`KafkaSecurity` feeds Faust (:meth:`KafkaSecurity.faust_credentials`, the
worker's ``broker_credentials``) and every aiokafka client the CLI creates
(:meth:`KafkaSecurity.client_kwargs`: publish-demo, replay, ensure_topics, the harness reads).
The password is a pydantic ``SecretStr``: ``repr``/``str`` of the settings, error messages and
logs show ``**********``; only :meth:`client_kwargs` / :meth:`faust_credentials` reveal it, to the
Kafka client itself.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from wattmix.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV = "WATTMIX_KAFKA_"


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{ENV}SECURITY_PROTOCOL={self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        sasl = self.protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise ConfigError(f"{ENV}SASL_MECHANISM={self.sasl_mechanism!r}: expected one of "
                                  f"{', '.join(MECHANISMS)}")
            if not self.username or self.password is None or not self.password.get_secret_value():
                raise ConfigError(f"SASL {self.sasl_mechanism} needs {ENV}USERNAME and {ENV}PASSWORD "
                                  f"(or {ENV}PASSWORD_FILE)")
        elif self.sasl_mechanism:
            raise ConfigError(f"{ENV}SASL_MECHANISM is set but the security protocol is {self.protocol}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError(f"mutual TLS needs both {ENV}SSL_CERTFILE and {ENV}SSL_KEYFILE")

    def __repr__(self) -> str:  # the password never shows, set or not
        pw = "'**********'" if self.password is not None else "None"
        return (f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
                f"username={self.username!r}, password={pw}, ssl_cafile={self.ssl_cafile!r}, "
                f"ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r}, "
                f"ssl_check_hostname={self.ssl_check_hostname!r})")

    __str__ = __repr__

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KafkaSecurity":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            v = env.get(ENV + name, "").strip()
            return v or None

        password = env.get(ENV + "PASSWORD") or None
        pw_file = get("PASSWORD_FILE")
        if password is None and pw_file:
            try:
                lines = Path(pw_file).read_text().splitlines()
                password = lines[0] if lines else None
            except OSError as exc:
                raise ConfigError(f"cannot read {ENV}PASSWORD_FILE {pw_file}: {exc.strerror}") from None
        mechanism = get("SASL_MECHANISM")
        mechanism = mechanism.upper() if mechanism else None
        ssl_set = any(get(k) for k in ("SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE"))
        protocol = get("SECURITY_PROTOCOL")
        if protocol is None:
            protocol = ("SASL_" if mechanism else "") + ("SSL" if ssl_set else "PLAINTEXT")
        check = (get("SSL_CHECK_HOSTNAME") or "1").lower() not in ("0", "false", "no", "off")
        return cls(protocol=protocol.upper(), sasl_mechanism=mechanism, username=get("USERNAME"),
                   password=SecretStr(password) if password is not None else None,
                   ssl_cafile=get("SSL_CAFILE"), ssl_certfile=get("SSL_CERTFILE"), ssl_keyfile=get("SSL_KEYFILE"),
                   ssl_check_hostname=check)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_ssl:
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
            if self.ssl_certfile:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot build the Kafka TLS context (cafile={self.ssl_cafile}, "
                              f"certfile={self.ssl_certfile}): {exc}") from None
        ctx.check_hostname = self.ssl_check_hostname
        return ctx

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App`` (None for PLAINTEXT)."""
        import faust

        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        assert self.password is not None
        return faust.SASLCredentials(username=self.username, password=self.password.get_secret_value(),
                                     ssl_context=self.ssl_context(), mechanism=self.sasl_mechanism)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
        if self.protocol == "PLAINTEXT":
            return {}
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            kw["ssl_context"] = self.ssl_context()
        if self.protocol.startswith("SASL_"):
            assert self.password is not None
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                      sasl_plain_password=self.password.get_secret_value())
        return kw


def client_kwargs() -> dict[str, Any]:
    """:meth:`KafkaSecurity.client_kwargs` of the environment's settings."""
    return KafkaSecurity.from_env().client_kwargs()
