"""The in-process store stays within its entry and byte bounds and honours TTLs."""

from __future__ import annotations

from gateway.cache_store import MemoryStore
from tests.conftest import FakeClock


async def test_lru_bounded_by_entries() -> None:
    store = MemoryStore(max_entries=2, max_bytes=1000)
    await store.put("a", b"1", 60)
    await store.put("b", b"2", 60)
    assert await store.get("a") == b"1"  # a is now the most recent
    await store.put("c", b"3", 60)
    assert await store.get("b") is None
    assert await store.get("a") == b"1" and await store.get("c") == b"3"
    assert len(store) == 2


async def test_bounded_by_bytes() -> None:
    store = MemoryStore(max_entries=100, max_bytes=10)
    await store.put("a", b"x" * 6, 60)
    await store.put("b", b"y" * 6, 60)
    assert await store.get("a") is None and await store.get("b") == b"y" * 6
    assert store.size_bytes == 6
    await store.put("huge", b"z" * 11, 60)
    assert await store.get("huge") is None and store.size_bytes == 6


async def test_ttl_with_an_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=10, max_bytes=100, clock=clock)
    await store.put("a", b"1", 30)
    clock.advance(29.9)
    assert await store.get("a") == b"1"
    clock.advance(0.2)
    assert await store.get("a") is None
    assert store.size_bytes == 0
