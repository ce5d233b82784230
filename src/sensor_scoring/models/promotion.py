"""The promotion gate, the alias's history, rollback and lineage.

The ``production`` alias moves only through :func:`move_alias`, which records each move (to which version, from
which, why, and by what: a training DAG run, a rollback command or form) in ``aliases/production-history.json``.
That history is the rollback path: :func:`rollback` points the alias back at the version before the current one,
or at any registered version named.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from sensor_scoring.models import registry
from sensor_scoring.names import check_version
from sensor_scoring.storage import Storage


@dataclass(frozen=True)
class Policy:
    """When a candidate may replace production (the training DAG's form sets each field).

    ``max_f1_drop``: on labelled held-back windows, the candidate's F1 may be at most this much below
    production's (0: no worse). ``min_flagged_share``/``max_flagged_share``: bounds on the share of held-back
    windows the candidate flags (labelled or not): a model flagging half the fleet, or nothing, is refused.
    """

    max_f1_drop: float = 0.0
    min_flagged_share: float = 0.0
    max_flagged_share: float = 0.1

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def decide(summary: dict[str, object], policy: Policy) -> tuple[bool, list[str]]:
    """Does the evaluation ``summary`` (``evaluation.compare``) satisfy ``policy``? And the reasons when not."""
    reasons: list[str] = []
    cand = summary["candidate_all"]
    assert isinstance(cand, dict)
    if not cand["windows"]:
        return False, ["no held-back window of a sensor with a new model: nothing to evaluate the version on"]
    share = float(cand["flagged_share"])
    if share > policy.max_flagged_share:
        reasons.append(
            f"it flags {share:.1%} of the held-back windows, above max_flagged_share {policy.max_flagged_share:.1%}"
        )
    if share < policy.min_flagged_share:
        reasons.append(
            f"it flags {share:.1%} of the held-back windows, below min_flagged_share {policy.min_flagged_share:.1%}"
        )
    if cand.get("anomalous") and not cand.get("recall"):
        reasons.append(f"it finds none of the {cand['anomalous']} labelled anomalous held-back windows")
    common, prod = summary.get("candidate"), summary.get("production")
    if isinstance(common, dict) and isinstance(prod, dict) and common["f1"] is not None and prod["f1"] is not None:
        if float(common["f1"]) < float(prod["f1"]) - policy.max_f1_drop:
            reasons.append(
                f"its F1 {common['f1']:.3f} on {common['labelled']} labelled held-back windows is below production's "
                f"{prod['f1']:.3f} by more than max_f1_drop {policy.max_f1_drop}"
            )
    return not reasons, reasons


def history_path(alias: str) -> str:
    return f"aliases/{alias}-history.json"


def history(storage: Storage, container: str, alias: str = registry.PRODUCTION_ALIAS) -> list[dict[str, object]]:
    """Every recorded move of ``alias``, oldest first (empty before the first)."""
    try:
        return list(json.loads(storage.read_bytes(container, history_path(alias))))
    except FileNotFoundError:
        return []


def current(storage: Storage, container: str, alias: str = registry.PRODUCTION_ALIAS) -> str | None:
    """The version ``alias`` points at, or None when it is not set."""
    try:
        return str(json.loads(storage.read_bytes(container, f"aliases/{alias}.json"))["version"])
    except FileNotFoundError:
        return None


def move_alias(
    storage: Storage,
    container: str,
    version: str,
    *,
    action: str,
    reason: str,
    by: str,
    alias: str = registry.PRODUCTION_ALIAS,
) -> dict[str, object]:
    """Point ``alias`` at ``version`` and record the move (``action``: promote or rollback). Returns the record."""
    record: dict[str, object] = {
        "version": version,
        "previous": current(storage, container, alias),
        "action": action,
        "reason": reason,
        "by": by,
        "at": datetime.now(timezone.utc).isoformat(),
    }
    registry.set_alias(storage, container, alias, version, note={k: v for k, v in record.items() if k != "version"})
    moves = history(storage, container, alias) + [record]
    storage.write_bytes(container, history_path(alias), json.dumps(moves, indent=2).encode())
    return record


def rollback(
    storage: Storage, container: str, to: str | None = None, *, by: str, alias: str = registry.PRODUCTION_ALIAS
) -> dict[str, object]:
    """Point ``alias`` at ``to``, or (None) at the version it pointed at before the current one."""
    now = current(storage, container, alias)
    if to is None:
        earlier = [m["previous"] for m in reversed(history(storage, container, alias)) if m["version"] == now]
        if not earlier or not earlier[0]:
            raise LookupError(
                f"alias {alias!r} (now {now}) has no earlier version in its history; name one: rollback --to <version>"
            )
        to = str(earlier[0])
    check_version(to, "rollback version")
    if to == now:
        raise ValueError(f"alias {alias!r} already points at {to}")
    if not storage.exists(container, f"versions/{to}/manifest.json"):
        raise LookupError(f"model version {to!r} is not registered in container {container!r}")
    return move_alias(storage, container, to, action="rollback", reason=f"rolled back from {now}", by=by, alias=alias)


def lineage(
    storage: Storage, container: str, version: str, alias: str = registry.PRODUCTION_ALIAS
) -> dict[str, object]:
    """Where a version came from (its manifest's lineage) and every move of ``alias`` to or from it."""
    manifest = registry.read_manifest(storage, container, version)
    moves = [m for m in history(storage, container, alias) if version in (m["version"], m["previous"])]
    return {
        "version": version,
        "train_start": manifest.get("train_start"),
        "train_end": manifest.get("train_end"),
        "params": manifest.get("params"),
        "lineage": manifest.get("lineage"),
        "alias_moves": moves,
    }
