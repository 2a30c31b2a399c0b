"""streams/connection.py (settings -> client arguments) and streams/dev/secure.py's files, without a
broker. What a secure broker does with them is tests/faults/test_security.py's, in the secure lane."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streams.connection import Connection, ConnectionSettingsError
from streams.dev.secure import BASE_PRINCIPALS, SecureDir, SecureSetupError, acls
from streams.settings import Settings


def settings(**fields) -> Settings:
    return Settings(_env_file=None, **fields)


@pytest.fixture(scope="module")
def secure_dir(tmp_path_factory) -> SecureDir:
    return SecureDir(tmp_path_factory.mktemp("conn") / "secure").ensure()


def test_the_defaults_add_nothing_to_the_bootstrap_servers():
    connection = settings(broker_url="kafka://h1:9092;kafka://h2:9093").connection
    assert connection.kwargs() == {"bootstrap_servers": "h1:9092,h2:9093"}
    assert connection.faust_credentials() is None
    assert Connection.from_settings(settings(**{k[3:].lower(): v for k, v in connection.env().items()})) == connection


def test_a_secure_connection_gives_aiokafka_and_faust_the_same_credentials(secure_dir):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    connection = settings(
        broker_url="kafka://127.0.0.1:9093",
        kafka_security_protocol="sasl_ssl",
        kafka_username="worker",
        kafka_password="pw",
        kafka_ca_file=secure_dir.ca,
    ).connection
    kwargs = connection.kwargs()
    assert {k: v for k, v in kwargs.items() if k != "ssl_context"} == {
        "bootstrap_servers": "127.0.0.1:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "pw",
    }
    assert kwargs["ssl_context"].check_hostname and kwargs["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    faust_auth = credentials_to_aiokafka_auth(connection.faust_credentials())
    assert {k: v for k, v in faust_auth.items() if k != "ssl_context"} == {
        k: v for k, v in kwargs.items() if k not in ("ssl_context", "bootstrap_servers")
    }
    assert "pw" not in repr(connection)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"kafka_security_protocol": "SSL"}, "expected one of PLAINTEXT, SASL_SSL"),
        ({"kafka_security_protocol": "SASL_SSL"}, "needs GC_KAFKA_USERNAME and GC_KAFKA_PASSWORD"),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_username": "u",
                "kafka_password": "p",
                "kafka_sasl_mechanism": "GSSAPI",
            },
            "GC_KAFKA_SASL_MECHANISM='GSSAPI'",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_username": "u", "kafka_password_file": "/nonexistent/pw"},
            "GC_KAFKA_PASSWORD_FILE=/nonexistent/pw: cannot read it",
        ),
    ],
)
def test_bad_settings_are_refused_saying_which(fields, says):
    with pytest.raises(ConnectionSettingsError, match=says.replace("(", r"\(")):
        settings(**fields).connection.kwargs()


def test_a_password_file_and_a_ca_file(tmp_path, secure_dir):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "not-pem").write_text("hello\n")
    base = {"kafka_security_protocol": "SASL_SSL", "kafka_username": "u"}
    assert settings(**base, kafka_password_file=tmp_path / "pw").connection.password == "s3cret"
    with pytest.raises(ConnectionSettingsError, match="the file is empty"):
        _ = settings(**base, kafka_password_file=tmp_path / "empty").connection
    for ca, says in ((tmp_path / "missing.pem", "cannot read it"), (tmp_path / "not-pem", "not a PEM certificate")):
        with pytest.raises(ConnectionSettingsError, match=says):
            settings(**base, kafka_password="p", kafka_ca_file=ca).connection.kwargs()


def test_the_secure_directory_is_private_and_reused(secure_dir):
    for path in (secure_dir.keystore, secure_dir.credentials_file):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(secure_dir.path).st_mode & 0o777 == 0o700
    before = {p.name: p.read_bytes() for p in (secure_dir.ca, secure_dir.keystore, secure_dir.credentials_file)}
    again = SecureDir(secure_dir.path).ensure(("firm-acme",))
    assert {p.name: p.read_bytes() for p in (again.ca, again.keystore)} == {
        k: v for k, v in before.items() if k != "credentials.json"
    }
    users = again.credentials()["users"]
    assert set(users) == {*BASE_PRINCIPALS, "firm-acme"}
    assert {p: users[p] for p in BASE_PRINCIPALS} == json.loads(before["credentials.json"])["users"]
    assert len(set(users.values())) == len(users), "every principal has a password of its own"


def test_client_files_per_principal(secure_dir):
    secure_dir.write_client_files("127.0.0.1:19093")
    env = dict(
        line.split("=", 1)
        for line in secure_dir.client_env("firm-demo").read_text().splitlines()
        if line and not line.startswith("#")
    )
    connection = Connection.from_settings(settings(**{k[3:].lower(): v for k, v in env.items()}))
    assert connection == secure_dir.connection("127.0.0.1:19093", "firm-demo")
    properties = secure_dir.client_properties("firm-demo").read_text()
    assert "security.protocol=SASL_SSL" in properties and f'password="{connection.password}"' in properties
    kcat = secure_dir.client_kcat("firm-demo").read_text()
    assert "sasl.username=firm-demo" in kcat and f"sasl.password={connection.password}" in kcat
    for path in (
        secure_dir.client_env("firm-demo"),
        secure_dir.client_properties("firm-demo"),
        secure_dir.client_kcat("firm-demo"),
    ):
        assert os.stat(path).st_mode & 0o777 == 0o600, path


def test_an_unreadable_credentials_file_says_so(tmp_path):
    broken = SecureDir(tmp_path / "secure")
    broken.path.mkdir()
    broken.credentials_file.write_text("{not json")
    with pytest.raises(SecureSetupError, match="credentials.json: unreadable"):
        broken.ensure()
    with pytest.raises(SecureSetupError, match="principal 'Firm Acme'"):
        SecureDir(tmp_path / "other").ensure(("Firm Acme",))


def test_the_acl_table_gives_each_principal_only_its_own_writes():
    table = acls(["firm-demo", "checkpoint-demo", "operator", "worker", "projector"], "gc.", "greenchannel")
    writes = {(a.principal, a.name) for a in table if a.operation == "WRITE" and a.resource == "TOPIC"}
    assert {name for who, name in writes if who == "firm-demo"} == {"gc.shipment.requests"}
    assert {name for who, name in writes if who == "checkpoint-demo"} == {"gc.checkpoint.scans"}
    assert {name for who, name in writes if who == "operator"} == {"gc.enterprises", "gc.region.risk"}
    assert not {name for who, name in writes if who == "projector"}
    assert not [a for a in table if a.operation in ("ALL", "ALTER", "DELETE", "CLUSTER_ACTION")]


def test_a_relative_secure_dir_hands_out_absolute_paths(tmp_path, monkeypatch):
    """The default GC_DATA_DIR is relative (`.greenchannel`); the secure directory's paths go to
    programs running elsewhere (SecureSetup.java in the cluster's workdir) and into client files
    read from anywhere, so every one of them is absolute, whatever the working directory later."""
    monkeypatch.chdir(tmp_path)
    secure = SecureDir(Path(".greenchannel") / "secure").ensure()
    assert secure.path == tmp_path / ".greenchannel" / "secure"
    assert secure.client_properties("admin").is_absolute() and secure.ca.is_absolute()
    secure.write_client_files("127.0.0.1:19093")
    monkeypatch.chdir("/")  # another working directory, as SecureSetup.java's
    assert secure.client_properties("admin").read_text().startswith("# admin")
    truststore = next(
        line.split("=", 1)[1]
        for line in secure.client_properties("admin").read_text().splitlines()
        if line.startswith("ssl.truststore.location=")
    )
    assert Path(truststore) == tmp_path / ".greenchannel" / "secure" / "ca.pem"
