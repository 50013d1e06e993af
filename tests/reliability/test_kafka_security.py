"""SASL (PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512) and TLS settings reach Faust and the CLI's aiokafka
clients from configuration (env vars, see streams/security.py), and the password never shows:
not in repr/str of the settings, not in error messages, not in logs, not in ``wattmix`` output.

The test broker (tansu) has no SASL listener, so the pass-through is checked where the settings
become Kafka client objects; one subprocess run shows what a worker prints when the broker
refuses/ignores SASL, and that the password is not in it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import subprocess
import sys

import pytest

from streams.security import KafkaSecurity
from wattmix.errors import ConfigError

PASSWORD = "pw-S3cr3t-7f3a9"


def in_loop(make):
    """aiokafka clients must be built inside a running loop (not started: no network)."""
    async def run():
        return make()
    return asyncio.run(run())


def env(**kw: str) -> dict[str, str]:
    return {f"WATTMIX_KAFKA_{k.upper()}": v for k, v in kw.items()}


@pytest.fixture(scope="module")
def cafile(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kafka.test",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "ca.pem")], check=True, capture_output=True)
    return d


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_settings_reach_faust_and_aiokafka(mechanism, tmp_path, caplog):
    import faust
    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import WorkerSettings, create_app

    sec = KafkaSecurity.from_env(env(sasl_mechanism=mechanism.lower(), username="wattmix", password=PASSWORD))
    assert sec.protocol == "SASL_PLAINTEXT" and sec.sasl_mechanism == mechanism
    caplog.set_level(logging.DEBUG)
    settings = WorkerSettings.from_args(kafka="127.0.0.1:1", db=str(tmp_path / "a.duckdb"), security=sec)
    for text in (repr(settings), str(settings), repr(sec), str(sec), repr(sec.faust_credentials())):
        assert PASSWORD not in text

    app = create_app(settings)
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials) and creds.mechanism.value == mechanism
    auth = credentials_to_aiokafka_auth(creds)  # what Faust hands its aiokafka consumer/producer
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_plain_password"] == PASSWORD

    kw = sec.client_kwargs()  # what publish-demo, replay and ensure_topics add to their clients
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                  "sasl_plain_username": "wattmix", "sasl_plain_password": PASSWORD}
    client = in_loop(lambda: AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **kw).client)
    assert (client._security_protocol, client._sasl_mechanism, client._sasl_plain_password) == \
        ("SASL_PLAINTEXT", mechanism, PASSWORD)
    assert PASSWORD not in caplog.text


def test_tls_and_sasl_ssl(cafile):
    from aiokafka.admin import AIOKafkaAdminClient

    ca = str(cafile / "ca.pem")
    sec = KafkaSecurity.from_env(env(ssl_cafile=ca))
    assert sec.protocol == "SSL"
    ctx = sec.client_kwargs()["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs()[0]["subject"] == ((("commonName", "kafka.test"),),)
    import faust

    assert isinstance(sec.faust_credentials(), faust.SSLCredentials)

    both = KafkaSecurity.from_env(env(sasl_mechanism="SCRAM-SHA-256", username="u", password=PASSWORD,
                                      ssl_cafile=ca, ssl_certfile=str(cafile / "ca.pem"),
                                      ssl_keyfile=str(cafile / "key.pem"), ssl_check_hostname="0"))
    assert both.protocol == "SASL_SSL"
    creds = both.faust_credentials()
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context.check_hostname is False
    kw = both.client_kwargs()
    in_loop(lambda: AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **kw))  # accepted by the admin client too
    assert kw["security_protocol"] == "SASL_SSL" and kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_password_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    sec = KafkaSecurity.from_env(env(sasl_mechanism="PLAIN", username="u", password_file=str(f)))
    assert sec.password.get_secret_value() == PASSWORD and PASSWORD not in repr(sec)


@pytest.mark.parametrize("bad", [
    env(sasl_mechanism="GSSAPI", username="u", password=PASSWORD),
    env(sasl_mechanism="PLAIN", password=PASSWORD),
    env(security_protocol="SSL", sasl_mechanism="PLAIN", username="u", password=PASSWORD),
    env(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", username="u", password=PASSWORD,
        ssl_cafile="/nonexistent/ca.pem"),
    env(security_protocol="bogus", password=PASSWORD),
])
def test_config_errors_never_show_the_password(bad):
    with pytest.raises(ConfigError) as exc:
        KafkaSecurity.from_env(bad).client_kwargs()
    assert PASSWORD not in str(exc.value) and PASSWORD not in repr(exc.value)
    assert "WATTMIX_KAFKA_" in str(exc.value) or "TLS" in str(exc.value)


@pytest.mark.integration
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512", "GSSAPI"])
def test_wattmix_cli_output_never_shows_the_password(mechanism, kafka_bootstrap, tmp_path):
    """A real `wattmix worker` / `wattmix publish-demo` start with SASL against the test broker
    (which has no SASL: the client fails the handshake or times out): whatever is printed
    (logs, errors, tracebacks), the password is not."""
    e = dict(os.environ, PYTHONUNBUFFERED="1",
             **env(sasl_mechanism=mechanism, username="wattmix", password=PASSWORD))
    outputs = []
    for args in (["worker", "--kafka", kafka_bootstrap, "--db", str(tmp_path / "a.duckdb")],
                 ["publish-demo", "--kafka", kafka_bootstrap, "--days", "1"]):
        try:
            r = subprocess.run([sys.executable, "-m", "wattmix", *args], env=e, capture_output=True, timeout=25)
            out = (r.stdout + r.stderr).decode("utf-8", "replace")
        except subprocess.TimeoutExpired as t:  # still trying to connect: look at what it said
            out = ((t.stdout or b"") + (t.stderr or b"")).decode("utf-8", "replace")
        outputs.append(out)
        assert PASSWORD not in out, out[-2000:]
    assert any(o.strip() for o in outputs)
