"""What a secure Apache Kafka needs on disk, and who may do what on it.

`SecureDir` (default `$GC_DATA_DIR/secure/`, git-ignored) holds, made on the first run and reused
after: a CA and a broker certificate (`ca.pem`, `broker.pem`: key and chain, Kafka's PEM keystore),
the SCRAM password of every principal and the controllers' PLAIN password (`credentials.json`), and
each principal's client files (`clients/<principal>.env`, `.properties`, `.kcat.conf`). Files
holding a secret are mode 0600.

`acls(...)` is the table of ACLs the admin (the super user) creates after the start: least privilege
for each principal, on PREFIXED patterns of GC_TOPIC_PREFIX and GC_APP_ID.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from ..connection import Connection

__all__ = ["SecureDir", "SecureSetupError", "Acl", "acls", "BASE_PRINCIPALS", "SUPER_USER", "CONTROLLER_USER"]

SUPER_USER = "admin"
CONTROLLER_USER = "controller"  # PLAIN, on the controller listener only (KRaft controllers cannot use SCRAM)
# `dashboard` reads only; `keyadmin` alone (and the worker, for its first key's record) writes gc.pass.keys,
# and a key record counts only when the offline root signed it (models.keyring), whoever wrote it.
BASE_PRINCIPALS = (
    "admin", "worker", "projector", "operator", "dashboard", "keyadmin", "gateway", "firm-demo", "checkpoint-demo",
)  # fmt: skip
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CERT_DAYS = 825


class SecureSetupError(RuntimeError):
    """The secure directory cannot be made or read."""


def _write_secret(path: Path, data: bytes | str) -> None:
    """Write `path` readable by its owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, 0o600)


def check_principal(name: str) -> str:
    if not _NAME.match(name):
        raise SecureSetupError(f"principal {name!r}: lower-case letters, digits and '-', at most 63")
    return name


@dataclass(frozen=True)
class SecureDir:
    path: Path
    hosts: tuple[str, ...] = ()  # host names the broker certificate names beside localhost and 127.0.0.1

    def __post_init__(self) -> None:
        # Absolute from the start: every path derived from it is handed to programs that run in
        # other working directories (SecureSetup.java in the cluster's workdir, the brokers in
        # their node's), and written into client files read from anywhere. A relative
        # `.greenchannel/secure` (the default GC_DATA_DIR) made SecureSetup.java fail with
        # FileNotFoundException, so no ACL was ever created.
        object.__setattr__(self, "path", Path(self.path).absolute())

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.path / "broker.pem"

    @property
    def credentials_file(self) -> Path:
        return self.path / "credentials.json"

    def client_env(self, principal: str) -> Path:
        return self.path / "clients" / f"{principal}.env"

    def client_properties(self, principal: str) -> Path:
        return self.path / "clients" / f"{principal}.properties"

    def client_kcat(self, principal: str) -> Path:
        return self.path / "clients" / f"{principal}.kcat.conf"

    # --- credentials ------------------------------------------------------------------------
    def credentials(self) -> dict:
        """{"controller": password, "users": {principal: password}} (read, never made here)."""
        try:
            data = json.loads(self.credentials_file.read_text())
            users = data["users"]
            if not isinstance(users, dict) or not isinstance(data["controller"], str):
                raise ValueError("users must be an object, controller a string")
            return data
        except FileNotFoundError:
            raise SecureSetupError(
                f"{self.credentials_file}: missing (run `greenchannel broker --kind kafka --secure` once to make it)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SecureSetupError(f"{self.credentials_file}: unreadable ({exc})") from None

    def password(self, principal: str) -> str:
        users = self.credentials()["users"]
        if principal not in users:
            raise SecureSetupError(
                f"no principal {principal!r} in {self.credentials_file} (known: {', '.join(sorted(users))})"
            )
        return users[principal]

    def ensure(self, principals: tuple[str, ...] = ()) -> SecureDir:
        """Make what is missing: certificates, passwords (also for new `principals`), client files."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        if not (self.ca.exists() and self.keystore.exists()):
            self._make_certificates()
        data = (
            self.credentials()
            if self.credentials_file.exists()
            else {"controller": secrets.token_urlsafe(24), "users": {}}
        )
        wanted = [check_principal(p) for p in (*BASE_PRINCIPALS, *principals)]
        if any(p not in data["users"] for p in wanted):
            for p in wanted:
                data["users"].setdefault(p, secrets.token_urlsafe(24))
            _write_secret(self.credentials_file, json.dumps(data, indent=2) + "\n")
        return self

    def principals(self) -> list[str]:
        return sorted(self.credentials()["users"])

    # --- certificates -----------------------------------------------------------------------
    def _make_certificates(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        until = now + dt.timedelta(days=_CERT_DAYS)

        def name(cn: str) -> x509.Name:
            return x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "greenchannel"),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name("greenchannel local CA"))
            .issuer_name(name("greenchannel local CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(h) for h in ("localhost", *self.hosts)] + [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(name("localhost"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        # The CA's key is not kept: nothing here signs another certificate later (a new broker
        # certificate comes with a new CA: delete the directory's ca.pem and broker.pem).
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_secret(self.keystore, key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
        self.ca.write_bytes(ca_cert.public_bytes(pem))

    # --- client files -----------------------------------------------------------------------
    def connection(self, bootstrap: str, principal: str, password: str | None = None) -> Connection:
        """The cluster at `bootstrap` as `principal` (its own password unless another is given)."""
        return Connection(
            bootstrap,
            "SASL_SSL",
            "SCRAM-SHA-512",
            principal,
            password if password is not None else self.password(principal),
            self.ca,
        )

    def write_client_files(self, bootstrap: str) -> Path:
        """clients/<principal>.env (GC_* settings, for `set -a; . FILE`), .properties (Kafka's tools)
        and .kcat.conf (kcat, librdkafka) for every principal; returns the clients directory."""
        users = self.credentials()["users"]
        for principal, password in sorted(users.items()):
            env = self.connection(bootstrap, principal).env()
            _write_secret(
                self.client_env(principal),
                "\n".join(
                    [
                        f"# {principal} on the secure cluster (greenchannel broker --kind kafka --secure)",
                        *(f"{k}={v}" for k, v in env.items()),
                        "",
                    ]
                ),
            )
            _write_secret(
                self.client_properties(principal),
                "\n".join(
                    [
                        f"# {principal}: for Kafka's own tools (--command-config FILE)",
                        f"bootstrap.servers={bootstrap}",
                        "security.protocol=SASL_SSL",
                        "sasl.mechanism=SCRAM-SHA-512",
                        f"sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                        f'username="{principal}" password="{password}";',
                        "ssl.truststore.type=PEM",
                        f"ssl.truststore.location={self.ca.resolve()}",
                        "",
                    ]
                ),
            )
            _write_secret(
                self.client_kcat(principal),
                "\n".join(
                    [
                        f"# {principal}: for kcat and other librdkafka clients (kcat -F FILE)",
                        f"bootstrap.servers={bootstrap}",
                        "security.protocol=SASL_SSL",
                        "sasl.mechanisms=SCRAM-SHA-512",
                        f"sasl.username={principal}",
                        f"sasl.password={password}",
                        f"ssl.ca.location={self.ca.resolve()}",
                        "",
                    ]
                ),
            )
        return self.path / "clients"

    def write_password_files(self) -> Path:
        """passwords/<principal> and passwords/controller: one secret a file (Docker secrets)."""
        data = self.credentials()
        for principal, password in {**data["users"], CONTROLLER_USER: data["controller"]}.items():
            _write_secret(self.path / "passwords" / principal, password + "\n")
        return self.path / "passwords"


def acl_tool_args(table: list[Acl]) -> list[str]:
    """The table as arguments of Kafka's kafka-acls.sh --add, one line per principal and resource."""
    grouped: dict[tuple, list[str]] = {}
    for acl in table:
        grouped.setdefault((acl.principal, acl.resource, acl.pattern, acl.name), []).append(acl.operation)
    option = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}
    return [
        f"--allow-principal User:{who} {option[resource]} {name} --resource-pattern-type {pattern.lower()} "
        + " ".join(f"--operation {op.title().replace('_', '')}" for op in ops)
        for (who, resource, pattern, name), ops in grouped.items()
    ]


def main(argv: list[str] | None = None) -> int:
    """`python -m streams.dev.secure DIR --host kafka-1 …`: the secure directory for a deployment
    (docker/compose.yml reads docker/secrets); `--acl-args`: the ACL table as kafka-acls.sh arguments."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m streams.dev.secure")
    ap.add_argument("dir", type=Path, nargs="?", help="the secure directory to make (kept when there)")
    ap.add_argument("--host", action="append", default=[], help="a broker host name for the certificate")
    ap.add_argument("--principal", action="append", default=[], help="one more principal (firm-…, checkpoint-…)")
    ap.add_argument("--acl-args", action="store_true", help="print the ACL table as kafka-acls.sh arguments")
    ap.add_argument("--prefix", default="gc.", help="GC_TOPIC_PREFIX (default gc.)")
    ap.add_argument("--app-id", default="greenchannel", help="GC_APP_ID (default greenchannel)")
    args = ap.parse_args(argv)
    try:
        principals = [check_principal(p) for p in (*BASE_PRINCIPALS, *args.principal)]
        if args.acl_args:
            print("\n".join(acl_tool_args(acls(principals, args.prefix, args.app_id))))
            return 0
        if args.dir is None:
            ap.error("give a directory, or --acl-args")
        secure = SecureDir(args.dir, tuple(args.host)).ensure(tuple(args.principal))
        print(f"secure files in {secure.write_password_files().parent}")
        return 0
    except SecureSetupError as exc:
        print(f"python -m streams.dev.secure: {exc}", file=sys.stderr)
        return 2


# --- who may do what ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Acl:
    principal: str
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    pattern: str  # LITERAL or PREFIXED
    name: str
    operation: str  # READ, WRITE, CREATE, DESCRIBE, ...

    def line(self) -> str:
        return f"User:{self.principal} {self.resource} {self.pattern} {self.name} {self.operation}"


# The topics the worker reads: every input, the firms' and the gateway's requests among them.
WORKER_READS = ("shipment.requests", "gateway.requests", "checkpoint.scans", "region.risk", "enterprises",
                "pass.keys", "pass.events")  # fmt: skip


def acls(principals: list[str], prefix: str = "gc.", app_id: str = "greenchannel") -> list[Acl]:
    """Every ALLOW entry (anything not allowed is denied: allow.everyone.if.no.acl.found=false)."""
    from ..handlers import Topics  # the one place topic names are made

    topics = Topics.with_prefix(prefix)
    t = {
        "shipment.requests": topics.requests,
        "gateway.requests": topics.gateway_requests,
        "pass.decisions": topics.decisions,
        "checkpoint.scans": topics.scans,
        "pass.status": topics.status,
        "enterprises": topics.enterprises,
        "region.risk": topics.risk,
        "pass.keys": topics.keys,
        "deadletter": topics.deadletter,
        "pass.events": topics.pass_events,
    }
    out: list[Acl] = []

    def allow(who: str, resource: str, pattern: str, name: str, *ops: str) -> None:
        out.extend(Acl(who, resource, pattern, name, op) for op in ops)

    for p in principals:
        if p.startswith("firm-"):
            allow(p, "TOPIC", "LITERAL", t["shipment.requests"], "WRITE")
            allow(p, "TOPIC", "LITERAL", t["pass.decisions"], "READ")
        elif p.startswith("checkpoint-"):
            allow(p, "TOPIC", "LITERAL", t["checkpoint.scans"], "WRITE")
            for name in ("pass.decisions", "pass.status", "pass.keys"):
                allow(p, "TOPIC", "LITERAL", t[name], "READ")
            allow(p, "GROUP", "PREFIXED", f"{app_id}-station-", "READ")
    allow("operator", "TOPIC", "LITERAL", t["enterprises"], "WRITE")
    allow("operator", "TOPIC", "LITERAL", t["region.risk"], "WRITE")
    allow("operator", "TOPIC", "PREFIXED", prefix, "READ", "DESCRIBE")
    allow("operator", "GROUP", "PREFIXED", app_id, "DESCRIBE")
    # The dashboard: reads, writes nothing. Its stolen credential shows the channel, changes nothing.
    allow("dashboard", "TOPIC", "PREFIXED", prefix, "READ", "DESCRIBE")
    allow("dashboard", "GROUP", "PREFIXED", app_id, "DESCRIBE")  # the consumers' lag
    # `keys rotate` / `withdraw` / `list`: the records it writes are the root's, signed offline.
    allow("keyadmin", "TOPIC", "LITERAL", t["pass.keys"], "READ", "DESCRIBE", "WRITE")
    # The worker: reads the inputs, writes the outputs (and its first key), makes and uses its own
    # internal topics (Faust's changelogs and leader topic, GC_APP_ID-…), transactions per partition.
    # The public topics are the admin's to create (`greenchannel topics` as admin; the secure broker
    # command makes them at its start).
    for name in WORKER_READS:
        allow("worker", "TOPIC", "LITERAL", t[name], "READ")
    for name in ("pass.decisions", "pass.status", "deadletter", "pass.events", "pass.keys"):
        allow("worker", "TOPIC", "LITERAL", t[name], "WRITE")
    allow("worker", "TOPIC", "PREFIXED", f"{app_id}-", "READ", "WRITE", "CREATE")
    allow("worker", "GROUP", "LITERAL", app_id, "READ")
    allow("worker", "TRANSACTIONAL_ID", "PREFIXED", f"{app_id}-", "WRITE")
    _readers(allow, t, app_id)
    return out


def _readers(allow, t: dict, app_id: str) -> None:
    """The projector's and the gateway's entries."""
    for name in ("pass.decisions", "pass.status", "region.risk", "enterprises"):
        allow("projector", "TOPIC", "LITERAL", t[name], "READ")
    allow("projector", "GROUP", "LITERAL", f"{app_id}-projector", "READ")
    # The firms' gateway: the only writer of its requests topic, whose `requested_by` the worker
    # therefore takes as the channel's word; it reads the answers to tell each firm its own.
    allow("gateway", "TOPIC", "LITERAL", t["gateway.requests"], "WRITE")
    for name in ("pass.decisions", "pass.status", "deadletter"):
        allow("gateway", "TOPIC", "LITERAL", t[name], "READ")
    allow("gateway", "GROUP", "LITERAL", f"{app_id}-gateway", "READ")


if __name__ == "__main__":
    sys.exit(main())
