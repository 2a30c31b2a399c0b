"""`greenchannel checkpoint`: a station for one checkpoint or a few, that keeps working offline.

The station reads the pass decisions, status events and the signing keyring (`gc.pass.keys`: the
public keys, with their withdrawals) in a consumer group of its own and keeps, in a local SQLite
file, the passes whose route crosses its checkpoints and every key it was given. It verifies a pass with
the core's one rule (`models.passes.scan_refusal`, the tracker's own) against that store and the
cached public keys: no broker needed. Every scan goes to a local outbox first (`Store.record`),
then a forwarder publishes the outbox in order, each scan with a stable scan_id, marked sent only
once the broker acknowledged it: with the broker gone the station keeps checking and recording,
and a station restarted mid-shift finds its queue where it left it.

Modules, one job each: `store` (the SQLite file: passes, keys, the outbox), `checks` (the verification),
`link` (the station process and its broker link), `web` (its page and API, and `run_station`).
"""

from .checks import check, keyring_of
from .link import Link, Station
from .store import Store, station_path

__all__ = ["Store", "Link", "Station", "check", "keyring_of", "station_path"]
