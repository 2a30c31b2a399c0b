"""A decision time the firm cannot choose, and passes that follow every risk change the channel knows.

The handlers run in process, as the worker's agents drive them: a request on its partition, each
reference change applied by the reference agent and then broadcast to every pass partition. Each
order of a request and a change is tried, and each must leave no active pass routed through a
region that is high (for its class) while the pass is valid, once the channel knows of it.
Through the broker: tests/integration/test_trusted_time_live.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.passes import kafka_partition
from models.records import format_time
from models.stored import load_applied, load_pass
from streams.audit import Record, Replayer, compare
from streams.dev.simulator import Scenario
from streams.handlers import Out, Pipeline, RecordMeta, ReferenceBehind, Tables, decision_time
from tests.support.factories import T, make_pipeline

NOW = datetime(2020, 2, 25, 12, 0, tzinfo=UTC)  # the channel's clock in these tests
WUHAN, GUANGZHOU, CHANGSHA = "420111", "440106", "430104"
XIANNING = "4212"  # a prefecture on the road from Wuhan to Guangzhou and Changsha
SCENARIO = Scenario(seed=23, start=NOW)


def body_of(n: int, kind: str) -> dict:
    """Request `n` of the scenario, the same body every call (a scenario draws as it goes)."""
    return Scenario(seed=23, start=NOW).request(n, kind=kind)


class Channel:
    """One worker's handlers over one set of tables, each input logged with its partition and offset,
    each broadcast handled on its partition at once (or held back, to try the other order)."""

    def __init__(self) -> None:
        self.pipeline: Pipeline = make_pipeline()
        self.tables = Tables.empty()
        self.records: list[Record] = []
        self.outs: list[Out] = []
        self.held: list[Out] = []
        for entry in SCENARIO.enterprise_entries():
            self.send(T.enterprises, entry["credit_code"].encode(), entry)

    def send(self, topic: str, key: bytes, body: dict, *, hold: bool = False, now=NOW) -> list[dict]:
        """What the worker publishes for one input (decisions, statuses); `hold`: its broadcasts wait
        (`deliver`), as when the pass partitions have not read them yet."""
        value = orjson.dumps(body)
        partition = kafka_partition(key, self.pipeline.partitions)
        offset = sum(r.topic == topic and r.partition == partition for r in self.records)
        self.records.append(Record(topic, partition, offset, len(self.records), key, value))
        meta = RecordMeta(topic, partition, offset, None)
        p = self.pipeline
        if topic == T.requests:
            outs = p.on_request(key, value, meta, tables=self.tables, now=now)
        elif topic == T.scans:
            outs = p.on_scan(key, value, meta, tables=self.tables, now=now)
        else:
            outs = {T.risk: p.on_risk, T.enterprises: p.on_enterprise, T.keys: p.on_key}[topic](key, value, meta)
        return self._route(outs, hold)

    def deliver(self) -> list[dict]:
        held, self.held = self.held, []
        return self._route(held, False)

    def _route(self, outs: list[Out], hold: bool) -> list[dict]:
        done = []
        for out in outs:
            if out.topic != T.pass_events:
                self.outs.append(out)
                done.append(orjson.loads(out.value))
            elif hold:
                self.held.append(out)
            else:
                more = self.pipeline.on_pass_event(out.value, partition=out.partition, tables=self.tables)
                done += self._route(more, False)
        return done

    def request(self, n: int, *, kind: str, submitted: datetime, destination: str = GUANGZHOU, now=NOW) -> dict:
        body = body_of(n, kind)
        body.update(
            origin={"adcode": WUHAN},
            destination={"adcode": destination},
            submitted_at=format_time(submitted),
            departure_at=format_time(NOW + timedelta(hours=2)),
            trip="single",
        )
        return self.send(T.requests, body["shipment_id"].encode(), body, now=now)[0]

    def risk(self, adcode: str, level: str, at: datetime, *, hold: bool = False) -> list[dict]:
        body = {"adcode": adcode, "level": level, "effective_at": format_time(at)}
        return self.send(T.risk, adcode.encode(), body, hold=hold)

    def remove(self, credit_code: str, at: datetime, *, hold: bool = False) -> list[dict]:
        body = {"credit_code": credit_code, "action": "remove", "effective_at": format_time(at)}
        return self.send(T.enterprises, credit_code.encode(), body, hold=hold)

    def route_of(self, decision: dict) -> list[str]:
        """The pass's route now: its last rerouting's, or the decision's."""
        pass_id = decision["pass"]["pass_id"]
        state = load_pass(self.tables.passes[pass_id])
        return [a[:4] for a in state.route["adcodes"]]

    def status_of(self, decision: dict) -> str:
        return load_pass(self.tables.passes[decision["pass"]["pass_id"]]).status

    def replayed(self) -> list:
        """The audit replay of this channel's log: its mismatches."""
        rep = Replayer(make_pipeline())
        reference = [r for r in self.records if r.topic in (T.risk, T.enterprises, T.keys)]
        rep.load_reference(reference)
        decisions = [self._logged(o, n) for n, o in enumerate(self.outs) if o.topic == T.decisions]
        statuses = [self._logged(o, n) for n, o in enumerate(self.outs) if o.topic == T.status]
        rep.replay(self.records, recorded=decisions, answers=statuses)
        return compare(rep, decisions, statuses).mismatches

    @staticmethod
    def _logged(out: Out, n: int) -> Record:
        return Record(out.topic, 0, n, n, out.key, out.value, out.headers)


def test_the_decision_time_is_the_channels_when_the_firm_claims_a_later_one():
    meta = RecordMeta(T.requests, 0, 0, None)
    assert decision_time(NOW + timedelta(days=1), NOW, meta) == NOW  # a claim in the future: now
    assert decision_time(NOW - timedelta(days=1), NOW, meta) == NOW - timedelta(days=1)  # earlier: stands
    assert decision_time(None, NOW, meta) == NOW  # no valid claim: now


def test_a_backdated_request_is_judged_over_the_window_up_to_the_end_of_its_pass():
    """The issue's first probe: a region raised a minute ago; the same P2 request, honest and dated
    yesterday, is rejected both ways."""
    channel = Channel()
    channel.risk(XIANNING, "high", NOW - timedelta(minutes=1))
    channel.risk("4301", "high", NOW - timedelta(minutes=1))  # Changsha, the destination
    honest = channel.request(1, kind="P2", submitted=NOW, destination=CHANGSHA)
    backdated = channel.request(2, kind="P2", submitted=NOW - timedelta(days=1), destination=CHANGSHA)
    assert [r["code"] for r in honest["reasons"]] == ["high_risk_region"]
    assert [r["code"] for r in backdated["reasons"]] == ["high_risk_region"]
    assert backdated["decided_at"] == format_time(NOW - timedelta(days=1))
    assert channel.replayed() == []


def test_a_request_decided_after_a_raise_routes_around_it_whatever_time_it_claims():
    """The issue's second probe: the raise applied, then requests that say they were submitted 30
    minutes ago: routed around, not through."""
    channel = Channel()
    channel.risk(XIANNING, "high", NOW)
    late = [channel.request(n, kind="P1", submitted=NOW - timedelta(minutes=30)) for n in range(3)]
    assert all(d["decision"] == "approved" and XIANNING not in channel.route_of(d) for d in late)
    assert channel.replayed() == []


def test_a_request_before_a_raise_is_rerouted_when_the_raise_reaches_its_partition():
    channel = Channel()
    decision = channel.request(1, kind="P1", submitted=NOW)
    assert XIANNING in channel.route_of(decision)
    events = channel.risk(XIANNING, "high", NOW + timedelta(minutes=5))
    assert [(e["status"], e["reason"]) for e in events] == [("rerouted", "route_crossed_high_risk_region")]
    assert XIANNING not in channel.route_of(decision)
    assert channel.replayed() == []


def test_a_raise_read_but_not_yet_broadcast_is_known_to_the_decision_and_visits_it_later():
    """The reference agent applied the raise to the worker's books; its broadcast has not reached
    the pass partitions yet. The request is decided knowing it (and says so); the broadcast then
    finds nothing to change."""
    channel = Channel()
    channel.risk(XIANNING, "high", NOW, hold=True)
    decision = channel.request(1, kind="P1", submitted=NOW - timedelta(hours=1))
    assert decision["known"]["risk"] and XIANNING not in channel.route_of(decision)
    assert channel.deliver() == []
    assert channel.replayed() == []


def test_a_raise_effective_during_the_pass_is_avoided_at_the_decision():
    """Known at 12:00, effective at 20:00, while the pass (departing 14:00) is valid: avoided."""
    channel = Channel()
    channel.risk(XIANNING, "high", NOW + timedelta(hours=8))
    decision = channel.request(1, kind="P1", submitted=NOW)
    assert decision["decision"] == "approved" and XIANNING not in channel.route_of(decision)
    assert channel.replayed() == []


def test_a_change_effective_after_the_pass_has_ended_is_not_the_pass_s_in_any_order():
    """Known first, effective long after the pass ends: the decision does not avoid it, and the
    change does not touch the pass, neither live nor in a replay that meets it after the request."""
    channel = Channel()
    channel.risk(XIANNING, "high", NOW + timedelta(days=30))
    decision = channel.request(1, kind="P1", submitted=NOW)
    assert XIANNING in channel.route_of(decision)
    assert channel.risk(XIANNING, "high", NOW + timedelta(days=31)) == []  # read after it: nothing either
    assert channel.replayed() == []


def test_a_region_lowered_before_the_request_is_open_to_it_and_not_to_a_backdated_one():
    channel = Channel()
    channel.risk(XIANNING, "high", NOW - timedelta(days=2))
    channel.risk(XIANNING, "low", NOW - timedelta(hours=1))
    honest = channel.request(1, kind="P1", submitted=NOW)
    backdated = channel.request(2, kind="P1", submitted=NOW - timedelta(days=1))
    assert XIANNING in channel.route_of(honest)
    assert XIANNING not in channel.route_of(backdated)  # high for part of its window: avoided
    assert channel.replayed() == []


@pytest.mark.parametrize("order", ["request_first", "removal_first", "removal_read_late"])
def test_a_key_enterprise_removal_in_each_order(order):
    """A P2 pass of a firm removed from the key-enterprise list: revoked when the removal comes
    after it; refused when the removal was known first, whatever time the request claims."""
    channel = Channel()
    body = body_of(1, "P2")
    shipper = body["shipper"]["credit_code"]
    consignee = body["consignee"]["credit_code"]
    if order == "removal_first":
        channel.remove(shipper, NOW - timedelta(minutes=1))
        channel.remove(consignee, NOW - timedelta(minutes=1))
    decision = channel.request(1, kind="P2", submitted=NOW - timedelta(hours=1))
    if order == "removal_first":
        assert [r["code"] for r in decision["reasons"]] == ["no_key_enterprise"]
    else:
        assert decision["decision"] == "approved"
        hold = order == "removal_read_late"
        channel.remove(shipper, NOW - timedelta(minutes=2), hold=hold)
        channel.remove(consignee, NOW - timedelta(minutes=1), hold=hold)
        channel.deliver()
        assert channel.status_of(decision) == "revoked"
    assert channel.replayed() == []


def test_a_partition_that_applied_more_than_the_workers_books_is_not_decided_on():
    """A worker that took a partition over from one that had read further: it must read the
    reference topics again before it decides there (`ReferenceBehind`), writing nothing first."""
    ahead, behind = Channel(), Channel()
    ahead.risk(XIANNING, "high", NOW)
    body = body_of(7, "P1")
    key = body["shipment_id"].encode()
    partition = kafka_partition(key, 4)
    behind.tables.applied[str(partition)] = ahead.tables.applied[str(partition)]  # the changelog's
    with pytest.raises(ReferenceBehind):
        behind.send(T.requests, key, body)
    assert not behind.tables.decided
    for record in [r for r in ahead.records if r.topic == T.risk]:  # read again
        behind.pipeline.on_risk(record.key, record.value, RecordMeta(T.risk, record.partition, record.offset, None))
    decided = behind.send(T.requests, key, body)[0]
    applied = load_applied(ahead.tables.applied[str(partition)])["risk"]
    assert decided["known"]["risk"] == {str(p): offset for p, offset in applied.items()}


# --- scans: the checkpoint's date, bounded by the channel's time ---------------------------------
@pytest.mark.parametrize(
    ("dated", "answer"),
    [
        (timedelta(minutes=10), ("held", "scan_time_ahead")),
        (timedelta(minutes=4), ("at_checkpoint", None)),  # within the clock skew
        (-timedelta(hours=23), ("at_checkpoint", None)),  # held offline by the station, then sent
        (-timedelta(hours=25), ("held", "scan_time_too_old")),
    ],
)
@pytest.mark.parametrize("rekeyed", [False, True])
def test_a_scan_is_taken_at_its_date_only_within_the_bounds_of_the_channels_time(dated, answer, rekeyed):
    channel = Channel()
    decision = channel.request(1, kind="P1", submitted=NOW)
    the_pass = decision["pass"]
    checkpoint = the_pass["route"]["checkpoints"][0]
    received = datetime.fromisoformat(checkpoint["eta"]) - dated  # the channel's time as it arrives
    scan = {
        "scan_id": "s-1",
        "pass_id": the_pass["pass_id"],
        "checkpoint_id": checkpoint["checkpoint_id"],
        "plate": the_pass["plate"],
        "kind": "arrival",
        "token": the_pass["token"],
        "scanned_at": checkpoint["eta"],
    }
    key = b"a plate, not the pass" if rekeyed else the_pass["pass_id"].encode()
    (event,) = channel.send(T.scans, key, scan, now=received)
    assert (event["status"], event["reason"]) == answer
    assert ("received_at" in event) == (answer[0] == "held")
    if answer[0] == "held":
        assert event["received_at"] == event["at"] == format_time(received)
        assert channel.status_of(decision) == "issued"  # nothing changed
    assert channel.send(T.scans, key, scan, now=received + timedelta(days=3)) == [event]  # the first answer again
    assert channel.replayed() == []


# --- the property: an earlier claimed time never gives a more favourable decision ----------------
CHANGES = st.lists(
    st.tuples(
        st.sampled_from(["4212", "4301", "43", "4402", "3609", "42", "4406"]),
        st.sampled_from(["low", "medium", "high"]),
        st.integers(min_value=-72, max_value=72),  # hours from now
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)  # as test_fuzz's `ci` profile
@given(
    CHANGES,
    st.sampled_from(["P0", "P1", "P2", "P3", "unlisted"]),
    st.sampled_from([GUANGZHOU, CHANGSHA, "360102", "441802"]),
    st.integers(min_value=-400 * 24, max_value=400 * 24),  # the claimed submitted_at, in hours from now
    st.booleans(),  # a removal of the shipper from the key-enterprise list, an hour from now
)
def test_any_claimed_time_is_never_more_favourable_than_the_channels(changes, kind, destination, hours, remove):
    channel = Channel()
    for adcode, level, at in changes:
        channel.risk(adcode, level, NOW + timedelta(hours=at))
    body = body_of(3, kind)
    if remove:
        channel.remove(body["shipper"]["credit_code"], NOW + timedelta(hours=1))
    stamped = channel.request(3, kind=kind, submitted=NOW, destination=destination)
    claimed = channel.request(4, kind=kind, submitted=NOW + timedelta(hours=hours), destination=destination)
    if claimed["decision"] != "approved":
        return
    assert stamped["decision"] == "approved", (stamped["reasons"], claimed["reasons"])
    blocked = channel.pipeline.decider.risk.blocked_during(
        NOW, datetime.fromisoformat(stamped["pass"]["valid_until"]), channel.pipeline.decider.graph.prefectures_in
    )
    ends = {WUHAN[:4], destination[:4]}
    assert not (set(a[:4] for a in claimed["pass"]["route"]["adcodes"]) - ends) & blocked
