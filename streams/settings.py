"""The one place where configuration is read: environment variables prefixed `GC_`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GC_", env_file=".env", extra="ignore")

    broker_url: str = "kafka://127.0.0.1:9092"
    # How every client reaches the broker (streams/connection.py turns these into client arguments):
    # PLAINTEXT (the embedded Tansu, a loopback development broker) or SASL_SSL (secure Apache Kafka).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: str | None = None
    # Or a file holding it (a Docker secret): read when GC_KAFKA_PASSWORD is not set.
    kafka_password_file: Path | None = None
    # The CA that signed the brokers' certificates (PEM); none: the system's trusted CAs.
    kafka_ca_file: Path | None = None
    database_url: str = "sqlite:///.greenchannel/greenchannel.db"
    topic_prefix: str = "gc."
    partitions: int = 4
    replication_factor: int = 1
    app_id: str = "greenchannel"
    # Tansu has no transactions; set exactly_once on Apache Kafka.
    processing_guarantee: str = "at_least_once"
    # exactly_once: how long each of the worker's transactions stays open before it commits (Faust's
    # broker_commit_interval). A read_committed reader sees an output only once its transaction has
    # committed, so this bounds each hop's latency; at_least_once keeps Faust's own interval.
    transaction_interval_ms: int = 100
    # Where the worker keeps its tables: "memory://" (rebuilt from their changelogs at every start)
    # or "rocksdb://" (on disk under data_dir, so a restart reads only the changelogs' tail).
    store: str = "memory://"
    # Faust's table_standby_replicas: how many other workers keep a copy of each partition's tables
    # by following its changelog, so a worker taking a partition over (a SIGKILL, a restart) reads
    # only the changelog's tail. 0: none; each standby costs its worker the memory of those tables.
    standby_replicas: int = 0
    # rocksdb://: each table partition is its own database, with its own block cache (reads) and
    # write buffers (writes before they reach disk). Memory held by them, at most:
    # tables (5) × partitions held × (block_cache_mb + write_buffer_mb × write_buffers) MiB.
    rocksdb_block_cache_mb: int = 4
    rocksdb_write_buffer_mb: int = 2
    rocksdb_write_buffers: int = 2
    # Open files (SST tables) per database; Faust's default is 90 % of the process's limit, each.
    rocksdb_max_open_files: int = 64
    # Seconds without a heartbeat before the group gives a worker's partitions to others: how
    # long a crashed worker's partitions wait for a replacement.
    session_timeout: float = 30.0
    # Longest a broker may hold the worker's fetch when no records are there (see streams.worker.compat.set_fetch_wait).
    fetch_wait_ms: int = 100
    data_dir: Path = Path(".greenchannel")
    key_dir: Path | None = None
    # The pinned root of trust (PEM public key): only key records it signed are taken, by the worker
    # and the stations. Unset: the development root, DATA_DIR/root/root.pub, made on first run with
    # its private half beside it (never in production: there the root's private key is offline).
    root_public_key: Path | None = None
    catalog: str = "catalog-2020.02-v1.json"
    # "offline" uses the packaged gazetteer; any other value names a geopy geocoder
    # (e.g. "nominatim") used for address text.
    geocoder: str = "offline"
    geocoder_user_agent: str = "greenchannel"
    # The firms' gateway: seconds before a failed webhook delivery is tried again, doubling after
    # each failure (at most an hour apart; 10 tries).
    webhook_retry_seconds: float = 5.0
    # The key of the drivers' pass links (HMAC-SHA256, 32 random bytes, streams.gateway.driver): made
    # on first use, mode 0600, outside the repository. Unset: KEY_DIR/driver-link.hmac. A new key
    # ends every link handed out before it.
    driver_link_key_file: Path | None = None
    # The gateway's public crossing times: "now" is the wall clock ("wall"), or the time of the latest
    # crossing in the database ("channel": a demo's day in 2020, a replayed log).
    public_clock: str = "wall"
    web_port: int = 6066
    web_enabled: bool = False
    web_bind: str = "127.0.0.1"
    web_host: str = "127.0.0.1"
    # The projector's /metrics (Prometheus text format); 0: not served. The worker serves its
    # own on the Faust web server (web_enabled, web_port).
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    # The pages' tokens (streams.web.Access): asked of every request, loopback too. Each from the
    # variable or, preferred, a file (its first line); neither: a token made per run and printed once
    # with the page's URL. Never on the command line, which `ps` shows to every user.
    dashboard_token: str | None = None
    dashboard_token_file: Path | None = None
    station_token: str | None = None
    station_token_file: Path | None = None
    # Host names (or addresses) the pages answer to beside their bind address, 127.0.0.1, localhost
    # and ::1, comma-separated: e.g. the name a tablet uses for the station. Others get 400 (DNS rebinding).
    page_hosts: str = ""
    # The worker's asyncio event loop: "uvloop" (libuv; less CPU per event) or "aio" (the standard one).
    event_loop: str = "uvloop"
    # The channel's clock: every this many seconds each worker sends a tick (the time now) to each
    # partition it owns, on the internal pass topic; a tick expires the passes whose validity ended
    # and takes out of the working state what is `pass_retention_days` past its end. 0: no ticks
    # (a clock of your own then sends them, as the demo does on its day in 2020).
    clock_seconds: float = 60.0
    pass_retention_days: float = 7.0
    batch_size: int = 500
    batch_window: float = 0.005

    @property
    def table_options(self) -> dict | None:
        """The `options=` of each table: RocksDB's memory bounds (None on other stores)."""
        if not self.store.startswith("rocksdb:"):
            return None
        from .worker.compat import rocksdb_options

        return rocksdb_options(
            block_cache_mb=self.rocksdb_block_cache_mb,
            write_buffer_mb=self.rocksdb_write_buffer_mb,
            write_buffers=self.rocksdb_write_buffers,
            max_open_files=self.rocksdb_max_open_files,
        )

    @property
    def keys_path(self) -> Path:
        return self.key_dir or self.data_dir / "keys"

    @property
    def driver_link_key_path(self) -> Path:
        return self.driver_link_key_file or self.keys_path / "driver-link.hmac"

    @property
    def root_public_path(self) -> Path:
        return self.root_public_key or self.data_dir / "root" / "root.pub"

    @property
    def isolation_level(self) -> str:
        """How a client reads the worker's outputs: under exactly_once only what its transactions
        committed (an aborted attempt's records are never seen)."""
        return "read_committed" if self.processing_guarantee == "exactly_once" else "read_uncommitted"

    @property
    def connection(self):
        """The connection every client opens (streams.connection.Connection)."""
        from .connection import Connection

        return Connection.from_settings(self)

    @property
    def bootstrap(self) -> str:
        """host:port list for aiokafka, from the Faust-style URL."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker_url.split(";"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
