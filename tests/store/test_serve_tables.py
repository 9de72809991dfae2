"""Schema version 4 for ``greentrack serve``: API tokens (only their hash stored), idle energy; a row by id."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from tests.store.store_records import make_record

from greentrack.errors import StoreError
from greentrack.store import Store, TokenInfo


def test_tokens_are_issued_hashed_checked_and_revoked(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Store(path) as store:
        assert store.has_tokens() is False
        alice = store.add_token("alice@example.com", admin=True)
        bob = store.add_token("bob@example.com", admin=False)
        assert alice.startswith("gt_") and len(alice) > 40 and alice != bob
        owner = store.token_owner(alice)
        assert isinstance(owner, TokenInfo) and owner.developer == "alice@example.com" and owner.admin is True
        assert owner.revoked_ts is None and owner.id == hashlib.sha256(alice.encode()).hexdigest()[:12]
        assert store.token_owner("gt_nope") is None and store.token_owner("") is None
        assert store.revoke_tokens("bob@example.com") == 1 and store.revoke_tokens("bob@example.com") == 0
        assert store.token_owner(bob) is None
        listed = {t.developer: t for t in store.list_tokens()}
        assert listed["bob@example.com"].revoked_ts is not None and listed["alice@example.com"].revoked_ts is None
        assert store.has_tokens() is True  # revoked ones count: revoking all must not open the server
        with pytest.raises(StoreError, match="needs a developer"):
            store.add_token(" ")
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("g.db-*"))
    assert alice.encode() not in raw and bob.encode() not in raw
    with sqlite3.connect(path) as conn:
        hashes = {r[0] for r in conn.execute("SELECT token_hash FROM api_tokens")}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in (alice, bob)}


def test_idle_energy_sums_over_a_window_pro_rata(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db") as store:
        store.record_idle(started_ts="2026-11-18T10:00:00Z", ended_ts="2026-11-18T10:01:00Z", energy_j=60.0,
                          method="measured", meter="nvml", uncertainty_j=6.0, host="gpu1")
        store.record_idle(started_ts="2026-11-18T10:01:00Z", ended_ts="2026-11-18T10:02:00Z", energy_j=120.0,
                          method="measured", meter="nvml", uncertainty_j=None, host="gpu2")
        whole = store.idle_totals(since_ts="2026-11-18T09:00:00Z", until_ts="2026-11-18T11:00:00Z")
        assert whole.energy_j == pytest.approx(180.0) and whole.intervals == 2 and whole.uncertainty_j is None
        assert whole.idle_s == pytest.approx(120.0, abs=1e-3)
        half = store.idle_totals(since_ts="2026-11-18T10:00:30Z", until_ts="2026-11-18T10:01:30Z", host="gpu1")
        assert half.energy_j == pytest.approx(30.0, rel=1e-6) and half.uncertainty_j == pytest.approx(3.0, rel=1e-6)
        none = store.idle_totals(since_ts="2026-11-19T00:00:00Z", until_ts="2026-11-20T00:00:00Z")
        assert (none.energy_j, none.intervals, none.uncertainty_j) == (0.0, 0, 0.0)
        with pytest.raises(StoreError, match="ends before"):
            store.record_idle(started_ts="2026-11-18T10:01:00Z", ended_ts="2026-11-18T10:00:00Z", energy_j=1.0,
                              method="measured", meter="nvml", uncertainty_j=None, host="gpu1")


def test_one_completion_by_id_of_one_developer_or_any(tmp_path: Path) -> None:
    """``Store.completion`` (``GET /v1/greentrack/completions/{id}``): the row as ``completions`` gives it, however
    old; another developer's id looks unknown."""
    with Store(tmp_path / "g.db") as store:
        store.record(make_record(1, ts="2020-01-01T00:00:00Z", text="secret"))  # years old: no time window
        store.record(make_record(2, developer="bob@example.com"))
        store.mark_accepted("c000001", "2026-11-18T12:00:00Z")
        row = store.completion("c000001")
        assert row == next(r for r in store.completions() if r["completion_id"] == "c000001")
        assert row is not None and "text" not in row and row["accepted"] == 1 and row["total_j"] == 1.25
        assert store.completion("c000001", developer="dev@example.com") == row
        assert store.completion("c000001", developer="bob@example.com") is None
        assert store.completion("c000002", developer="bob@example.com") is not None
        assert store.completion("c000002", developer="dev@example.com") is None
        assert store.completion("c999999") is None
