"""The one place where the settings become a Kafka client's connection arguments.

`Connection` holds the bootstrap servers and, on a secure cluster, the SASL_SSL credentials
(GC_KAFKA_SECURITY_PROTOCOL, GC_KAFKA_SASL_MECHANISM, GC_KAFKA_USERNAME, GC_KAFKA_PASSWORD or
GC_KAFKA_PASSWORD_FILE, GC_KAFKA_CA_FILE). `kwargs()` is what every aiokafka producer, consumer and admin client is
opened with; `faust_credentials()` is the worker's `broker_credentials`. With the defaults
(PLAINTEXT) both add nothing: the clients and the wire are as without this module.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Connection", "ConnectionSettingsError", "PROTOCOLS", "MECHANISMS", "read_password"]

PROTOCOLS = ("PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class ConnectionSettingsError(ValueError):
    """The connection settings are incomplete, contradictory or name an unreadable file."""


def read_password(path: Path) -> str:
    """GC_KAFKA_PASSWORD_FILE's first line (a Docker secret's whole content)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectionSettingsError(f"GC_KAFKA_PASSWORD_FILE={path}: cannot read it ({exc})") from None
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise ConnectionSettingsError(f"GC_KAFKA_PASSWORD_FILE={path}: the file is empty")
    return password


@dataclass(frozen=True)
class Connection:
    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in PROTOCOLS:
            raise ConnectionSettingsError(
                f"GC_KAFKA_SECURITY_PROTOCOL={self.security_protocol!r}: expected one of " + ", ".join(PROTOCOLS)
            )
        if not self.secure:
            return
        if self.sasl_mechanism not in MECHANISMS:
            raise ConnectionSettingsError(
                f"GC_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: expected one of " + ", ".join(MECHANISMS)
            )
        if not self.username or not self.password:
            raise ConnectionSettingsError(
                "GC_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs GC_KAFKA_USERNAME and GC_KAFKA_PASSWORD "
                "(the client files written by `greenchannel broker --kind kafka --secure`)"
            )

    @classmethod
    def from_settings(cls, settings) -> Connection:
        password = settings.kafka_password
        if password is None and settings.kafka_password_file is not None:
            password = read_password(settings.kafka_password_file)
        return cls(
            settings.bootstrap,
            settings.kafka_security_protocol.upper(),
            settings.kafka_sasl_mechanism.upper(),
            settings.kafka_username,
            password,
            settings.kafka_ca_file,
        )

    @property
    def secure(self) -> bool:
        return self.security_protocol == "SASL_SSL"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate and host name against GC_KAFKA_CA_FILE (or the system's CAs)."""
        from aiokafka.helpers import create_ssl_context

        if self.ca_file is None:
            return create_ssl_context()
        try:
            Path(self.ca_file).read_bytes()
        except OSError as exc:
            raise ConnectionSettingsError(
                f"GC_KAFKA_CA_FILE={self.ca_file}: cannot read it ({exc.strerror or exc})"
            ) from None
        try:
            return create_ssl_context(cafile=str(self.ca_file))
        except ssl.SSLError as exc:
            raise ConnectionSettingsError(f"GC_KAFKA_CA_FILE={self.ca_file}: not a PEM certificate ({exc})") from None

    def kwargs(self) -> dict:
        """The keyword arguments of AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        if not self.secure:
            return {"bootstrap_servers": self.bootstrap}
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
            "ssl_context": self.ssl_context(),
        }

    def faust_credentials(self):
        """The Faust app's `broker_credentials` (None: plain text)."""
        if not self.secure:
            return None
        import faust

        return faust.SASLCredentials(
            username=self.username,
            password=self.password,
            mechanism=self.sasl_mechanism,
            ssl_context=self.ssl_context(),
        )

    def env(self) -> dict[str, str]:
        """The GC_* settings that give this connection back (Settings -> from_settings)."""
        env = {"GC_BROKER_URL": ";".join(f"kafka://{host}" for host in self.bootstrap.split(","))}
        if self.secure:
            env.update(
                GC_KAFKA_SECURITY_PROTOCOL=self.security_protocol,
                GC_KAFKA_SASL_MECHANISM=self.sasl_mechanism,
                GC_KAFKA_USERNAME=self.username,
                GC_KAFKA_PASSWORD=self.password,
            )
            if self.ca_file is not None:
                env["GC_KAFKA_CA_FILE"] = str(Path(self.ca_file).resolve())
        return env

    def as_user(self, username: str, password: str) -> Connection:
        """The same cluster, another principal."""
        from dataclasses import replace

        return replace(self, username=username, password=password)

    def __repr__(self) -> str:  # never the password
        who = f" as {self.username}" if self.secure else ""
        return f"<Connection {self.security_protocol} {self.bootstrap}{who}>"
