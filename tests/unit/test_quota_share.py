"""Quota sharing by demand against fakes: the allocation, the view (TTL, own heartbeat), fallback, raise delay."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.config import QuotaSharingSettings
from ingestor.errors import QuotaBusError
from ingestor.metrics import Metrics
from ingestor.quota_share import Claim, Heartbeat, Key, Load, QuotaShare, allocate
from ingestor.ratelimit import RateLimiter
from tests.conftest import wait_until

KEY: Key = ("shop", "PutItems")
QUOTA = 10.0


# ---------------------------------------------------------------------- allocate (pure)


def test_busy_member_gets_what_idle_ones_leave_apart_from_a_small_reserve() -> None:
    shares = allocate({"a": Claim(1.0, 2), "b": Claim(0.0, 2)}, 4, idle_reserve=0.05)
    assert shares["a"] == pytest.approx(0.975)
    assert shares["b"] == pytest.approx(0.025)


def test_balanced_demand_splits_evenly_and_spare_is_spread() -> None:
    assert allocate({"a": Claim(1.0, 2), "b": Claim(1.0, 2)}, 4, 0.05) == {"a": 0.5, "b": 0.5}
    idle = allocate({"a": Claim(0.0, 2), "b": Claim(0.0, 2)}, 4, 0.05)
    assert idle["a"] == pytest.approx(0.5) and idle["b"] == pytest.approx(0.5)


def test_max_min_fair_a_small_demand_is_met_in_full() -> None:
    shares = allocate({"a": Claim(1.0, 1), "b": Claim(0.3, 1), "c": Claim(1.0, 1)}, 3, 0.05)
    assert shares["b"] == pytest.approx(0.3)
    assert shares["a"] == pytest.approx(0.35) and shares["c"] == pytest.approx(0.35)


def test_unclaimed_partitions_keep_their_share_reserved() -> None:
    # b's heartbeats are not seen: its 2 of 4 partitions keep half the quota, even though a alone is busy
    assert allocate({"a": Claim(1.0, 2)}, 4, 0.05) == {"a": 0.5}


def test_a_member_pacing_at_a_fixed_share_keeps_it() -> None:
    shares = allocate({"a": Claim(1.0, 2), "b": Claim(0.0, 2, fixed=0.5)}, 4, 0.05)
    assert shares == {"a": 0.5, "b": 0.5}


@given(
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.tuples(st.floats(0, 1), st.integers(0, 4), st.none() | st.floats(0, 0.5)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 16),
    st.floats(0, 0.5),
)
def test_shares_of_those_not_fixed_never_exceed_what_is_left(
    raw: dict[str, tuple[float, int, float | None]], total: int, reserve: float
) -> None:
    claims = {m: Claim(d, p, f) for m, (d, p, f) in raw.items()}
    shares = allocate(claims, total, reserve)
    assert set(shares) == set(claims)
    fixed = sum(c.fixed for c in claims.values() if c.fixed is not None)
    free = sum(v for m, v in shares.items() if claims[m].fixed is None)
    claimed = sum(c.partitions for c in claims.values())
    unseen = max(0, total - claimed) / total if total else 0.0
    assert free <= max(0.0, 1.0 - fixed - unseen) + 1e-9
    assert all(v >= 0 for v in shares.values())


def test_everyone_computes_the_same_allocation_whatever_the_order() -> None:
    claims = {"b": Claim(0.4, 1), "a": Claim(0.4, 1), "c": Claim(1.0, 2)}
    assert allocate(claims, 4, 0.05) == allocate(dict(reversed(list(claims.items()))), 4, 0.05)


def test_heartbeat_round_trips_and_rejects_garbage() -> None:
    hb = Heartbeat("m1", 7, 1000.5, {KEY: Claim(0.5, 2, None, 120, 3.5)})
    assert Heartbeat.decode(hb.encode()) == hb
    for bad in (b"not json", b'{"v": 99}', b'{"v": 1, "member": "x"}', b"[]"):
        with pytest.raises(ValueError):
            Heartbeat.decode(bad)


# ---------------------------------------------------------------------- the controller, with a fake clock


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


@dataclass
class FakeLoad:
    backlog: int | None = 0
    consumed: float = 0.0

    def __call__(self) -> Mapping[Key, Load]:
        return {KEY: Load(self.backlog, self.consumed)}


class NoBus:
    async def start(self) -> None: ...
    async def publish(self, heartbeat: Heartbeat) -> None: ...
    async def receive(self, timeout_s: float) -> list[Heartbeat]:
        return []

    async def stop(self) -> None: ...


SETTINGS = QuotaSharingSettings(heartbeat_interval_s=1.0, ttl_s=4.0, idle_reserve=0.05)


def member(name: str, clock: FakeClock, load: FakeLoad, metrics: Metrics | None = None) -> QuotaShare:
    return QuotaShare(
        SETTINGS,
        {KEY: RateLimiter(QUOTA)},
        NoBus(),
        load,
        member=name,
        metrics=metrics,
        clock=clock,
        wall=clock.wall,
    )


def exchange(*members: QuotaShare) -> None:
    """One heartbeat round: everyone beats, everyone reads everyone (itself included), everyone updates."""
    beats = [m.beat() for m in members]
    for m in members:
        m.receive(beats)
        m.update()


def test_alone_and_unheard_a_member_paces_at_its_partition_share() -> None:
    clock = FakeClock()
    a = member("a", clock, FakeLoad(backlog=10_000))
    a.assigned({KEY: (1, 4)})
    assert a.applied[KEY] == pytest.approx(0.25)
    assert not a.healthy


def test_skewed_backlog_the_busy_member_takes_the_idle_ones_share() -> None:
    clock, busy, idle = FakeClock(), FakeLoad(backlog=10_000), FakeLoad()
    metrics = Metrics()
    a, b = member("a", clock, busy, metrics), member("b", clock, idle)
    a.assigned({KEY: (2, 4)})
    b.assigned({KEY: (2, 4)})
    for _ in range(4):
        clock.now += 1.0
        exchange(a, b)
    assert a.applied[KEY] == pytest.approx(0.975)
    assert b.applied[KEY] == pytest.approx(0.025)
    assert metrics.registry.get_sample_value("ingestor_quota_share", {"dataset_group": "shop", "api": "PutItems"}) == (
        pytest.approx(0.975)
    )
    assert metrics.registry.get_sample_value("ingestor_quota_peers") == 2


def test_a_steady_intake_is_demand_even_without_a_backlog() -> None:
    clock, busy, live = FakeClock(), FakeLoad(backlog=10_000), FakeLoad()
    a, b = member("a", clock, busy), member("b", clock, live)
    a.assigned({KEY: (2, 4)})
    b.assigned({KEY: (2, 4)})
    for _ in range(8):
        clock.now += 1.0
        live.consumed += 24  # 24 records/s = 2.4 full calls/s of 10 → demand 1.25 × 2.4 / 10 = 0.3
        exchange(a, b)
    assert b.applied[KEY] == pytest.approx(0.3, abs=0.02)
    assert a.applied[KEY] == pytest.approx(0.7, abs=0.02)


def test_shares_are_lowered_at_once_and_raised_one_interval_later() -> None:
    clock, load_a, load_b = FakeClock(), FakeLoad(), FakeLoad(backlog=10_000)
    a, b = member("a", clock, load_a), member("b", clock, load_b)
    a.assigned({KEY: (2, 4)})
    b.assigned({KEY: (2, 4)})
    for _ in range(4):
        clock.now += 1.0
        exchange(a, b)
    assert a.applied[KEY] == pytest.approx(0.025)
    # a's backlog arrives: it asks for more; b lowers as soon as it reads that, a raises only an interval later
    load_a.backlog = 10_000
    clock.now += 1.0
    exchange(a, b)
    assert b.applied[KEY] == pytest.approx(0.5)
    assert a.applied[KEY] == pytest.approx(0.025)
    clock.now += 0.5
    a.update()
    assert a.applied[KEY] == pytest.approx(0.025)
    clock.now += 0.5
    a.update()
    assert a.applied[KEY] == pytest.approx(0.5)
    for t in range(40):  # at every step of the transition the two together stay within the quota
        assert a.applied[KEY] + b.applied[KEY] <= 1.0 + 1e-9, t
        if t == 10:
            load_a.backlog, load_b.backlog = 0, 10_000
        clock.now += 0.25
        if t % 4 == 0:
            exchange(a, b)
        else:
            a.update()
            b.update()


def test_a_dead_member_stops_counting_after_the_ttl_but_its_partitions_stay_reserved() -> None:
    clock, busy, idle = FakeClock(), FakeLoad(backlog=10_000), FakeLoad(backlog=10_000)
    a, b = member("a", clock, busy), member("b", clock, idle)
    a.assigned({KEY: (2, 4)})
    b.assigned({KEY: (2, 4)})
    for _ in range(4):
        clock.now += 1.0
        exchange(a, b)
    assert a.applied[KEY] == pytest.approx(0.5)
    assert a.peers() == ["b"]
    for _ in range(5):  # b is gone: only a beats
        clock.now += 1.0
        exchange(a)
    assert a.peers() == []
    assert a.applied[KEY] == pytest.approx(0.5)  # b's 2 partitions are not claimed by anyone live
    a.assigned({KEY: (4, 4)})  # the group gave a b's partitions
    clock.now += 1.0
    exchange(a)
    clock.now += 1.0
    exchange(a)
    assert a.applied[KEY] == pytest.approx(1.0)


def test_a_clean_stop_counts_no_more_at_once() -> None:
    clock = FakeClock()
    a, b = member("a", clock, FakeLoad(backlog=10_000)), member("b", clock, FakeLoad())
    a.assigned({KEY: (2, 4)})
    b.assigned({KEY: (2, 4)})
    clock.now += 1.0
    exchange(a, b)
    a.receive([Heartbeat("b", 99, clock.wall(), {}, leaving=True)])
    assert a.peers() == []


def test_without_its_own_heartbeats_back_a_member_falls_back_and_says_so() -> None:
    clock = FakeClock()
    a, b = member("a", clock, FakeLoad()), member("b", clock, FakeLoad(backlog=10_000))
    a.assigned({KEY: (2, 4)})
    b.assigned({KEY: (2, 4)})
    for _ in range(4):
        clock.now += 1.0
        exchange(a, b)
    assert a.applied[KEY] == pytest.approx(0.025)
    # a can still publish but no longer reads (its own heartbeats do not come back): after the TTL it paces at
    # its partition share and publishes that as fixed, so b leaves that share alone
    for _ in range(5):
        clock.now += 1.0
        hb_a, hb_b = a.beat(), b.beat()
        b.receive([hb_a, hb_b])
        a.update()
        b.update()
    assert not a.healthy
    assert a.applied[KEY] == pytest.approx(0.5)
    assert hb_a.claims[KEY].fixed == pytest.approx(0.5)
    assert b.applied[KEY] == pytest.approx(0.5)


def test_heartbeats_older_than_the_ttl_are_ignored() -> None:
    clock = FakeClock()
    a = member("a", clock, FakeLoad())
    a.assigned({KEY: (2, 4)})
    a.receive([Heartbeat("old", 1, clock.wall() - 10, {KEY: Claim(1.0, 2)})])
    assert a.peers() == []


# ---------------------------------------------------------------------- the loop, with an in-memory bus


@dataclass
class MemoryBus:
    """Every member's bus reads what every member published; ``down`` makes every call fail."""

    log: list[Heartbeat]
    read: int = 0
    down: bool = False
    started: bool = field(default=False)
    starts: int = 0
    deaf: bool = False  # publishes succeed but nothing is ever read (e.g. the topic vanished)

    async def start(self) -> None:
        self.starts += 1
        if self.down:
            raise QuotaBusError("down")
        self.read = len(self.log)
        self.started = True

    async def publish(self, heartbeat: Heartbeat) -> None:
        if self.down:
            raise QuotaBusError("down")
        self.log.append(heartbeat)

    async def receive(self, timeout_s: float) -> list[Heartbeat]:
        if self.down:
            raise QuotaBusError("down")
        await asyncio.sleep(timeout_s)
        new, self.read = self.log[self.read :], len(self.log)
        return [] if self.deaf else new

    async def stop(self) -> None: ...


async def test_two_members_on_a_shared_bus_converge_and_fall_back_when_it_fails() -> None:
    settings = QuotaSharingSettings(heartbeat_interval_s=0.1, ttl_s=0.4)
    log: list[Heartbeat] = []
    buses = [MemoryBus(log), MemoryBus(log)]
    loads = [FakeLoad(backlog=10_000), FakeLoad()]
    members = [
        QuotaShare(settings, {KEY: RateLimiter(QUOTA)}, bus, load, member=name)
        for name, bus, load in zip("ab", buses, loads, strict=True)
    ]
    for m in members:
        m.assigned({KEY: (2, 4)})
    tasks = [asyncio.create_task(m.run()) for m in members]
    try:
        await wait_until(lambda: members[0].applied[KEY] > 0.9, timeout=10, what="the busy member's share rises")
        assert members[1].applied[KEY] < 0.1
        buses[0].down = True
        await wait_until(lambda: members[0].applied[KEY] == 0.5, timeout=10, what="fallback to the partition share")
        await wait_until(lambda: members[1].applied[KEY] == 0.5, timeout=10, what="b leaves a's partitions alone")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_member_not_yet_assigned_reserves_nothing() -> None:
    clock = FakeClock()
    a, newcomer = member("a", clock, FakeLoad(backlog=10_000)), member("n", clock, FakeLoad())
    a.assigned({KEY: (4, 4)})
    for _ in range(3):
        clock.now += 1.0
        exchange(a, newcomer)
    assert newcomer.beat().claims[KEY].fixed == 0.0
    assert a.applied[KEY] == pytest.approx(1.0)


@dataclass
class UnknownLoad:
    def __call__(self) -> Mapping[Key, Load]:
        return {KEY: Load(None, 0.0)}


def test_a_backlog_not_known_yet_asks_for_the_whole_quota() -> None:
    clock = FakeClock()
    a = member("a", clock, UnknownLoad())
    a.assigned({KEY: (2, 4)})
    assert a.beat().claims[KEY].demand == 1.0


async def test_a_member_whose_heartbeats_do_not_come_back_restarts_its_bus_and_falls_back() -> None:
    settings = QuotaSharingSettings(heartbeat_interval_s=0.1, ttl_s=0.3)
    bus = MemoryBus([])
    m = QuotaShare(settings, {KEY: RateLimiter(QUOTA)}, bus, FakeLoad(backlog=10_000), member="a")
    m.assigned({KEY: (2, 4)})
    task = asyncio.create_task(m.run())
    try:
        await wait_until(lambda: m.healthy, timeout=10, what="healthy")
        bus.deaf = True
        await wait_until(lambda: not m.healthy and m.applied[KEY] == 0.5, timeout=10, what="fallback")
        await wait_until(lambda: bus.starts >= 2, timeout=10, what="the bus restarted")
        bus.deaf = False
        await wait_until(lambda: m.healthy, timeout=10, what="healthy again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------- settings


CONFIG_FILE = Path(__file__).parents[2] / "config" / "ingestor.yaml"


def test_quota_sharing_defaults_to_demand_and_takes_the_mode_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingestor.config import Settings

    assert Settings.load(CONFIG_FILE).personalize.quota_sharing.mode == "demand"
    monkeypatch.setenv("INGESTOR_PERSONALIZE__QUOTA_SHARING__MODE", "partitions")
    assert Settings.load(CONFIG_FILE).personalize.quota_sharing.mode == "partitions"
    monkeypatch.delenv("INGESTOR_PERSONALIZE__QUOTA_SHARING__MODE")
    shorthand = Settings.load(CONFIG_FILE, personalize={"quota_sharing": "partitions"})
    assert shorthand.personalize.quota_sharing.mode == "partitions"


def test_a_ttl_shorter_than_two_heartbeats_fails_at_start_naming_the_key() -> None:
    from ingestor.config import Settings
    from ingestor.errors import ConfigError

    with pytest.raises(ConfigError, match=r"personalize\.quota_sharing.*ttl_s"):
        Settings.load(CONFIG_FILE, personalize={"quota_sharing": {"heartbeat_interval_s": 2, "ttl_s": 3}})


def test_a_dataset_held_by_a_fatal_error_asks_for_no_quota() -> None:
    """Its backlog cannot be sent (one probe call every fatal_retry_s): counting it would keep the group's quota
    with this member while a replica that can use it waits."""
    from ingestor.app import demand_probe
    from ingestor.config import Settings
    from ingestor.errors import FatalRouteError
    from ingestor.pipeline import Pipeline
    from ingestor.sender import Sender
    from tests.fakes import FakePersonalize, FakeProducer

    config = Path(__file__).parents[2] / "config"
    arn = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/{}"
    settings = Settings(
        kafka={"dead_letter_topic": "dlq"},
        routes=[
            {
                "topic": "items",
                "kind": "items",
                "dataset_arn": arn.format("ITEMS"),
                "schema": config / "schemas/items.avsc",
            },
            {
                "topic": "users",
                "kind": "users",
                "dataset_arn": arn.format("USERS"),
                "schema": config / "schemas/users.avsc",
            },
        ],
    )
    metrics = Metrics()
    pipeline = Pipeline(
        settings, Sender(FakePersonalize(), metrics, settings.personalize.retry), FakeProducer(), metrics
    )

    class Source:
        def backlog(self, topics: list[str]) -> int:
            return 500 * len(topics)

    probe = demand_probe(pipeline, Source(), metrics)
    assert probe() == {("shop", "PutItems"): Load(500, 0.0), ("shop", "PutUsers"): Load(500, 0.0)}
    next(ds for ds in pipeline.datasets if ds.target.api == "PutItems").fatal = FatalRouteError("no such dataset")
    assert probe() == {("shop", "PutItems"): Load(0, 0.0), ("shop", "PutUsers"): Load(500, 0.0)}
