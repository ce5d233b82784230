"""The promotion gate, the alias's history, rollback and lineage.

The ``production`` alias moves only through :func:`move_alias`, which records each move (to which version, from
which, why, and by what: a training DAG run, a rollback command or form) in ``aliases/production-history.json``.
That history is the rollback path: :func:`rollback` walks the alias back one promotion at a time
(:func:`production_stack`; never forward to a version rolled back from), or points it at any registered version named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import ClassVar

from sensor_scoring.models import registry
from sensor_scoring.names import check_version
from sensor_scoring.records import Record
from sensor_scoring.storage import Storage

#: Sensors named in a refusal (the verdict counts them all).
MAX_NAMED = 20
#: Binomial standard errors the measured false-alarm rate may exceed the calibrated one by (3: a version calibrated
#: right is refused about once in 700 evaluations by chance).
FALSE_ALARM_SIGMAS = 3.0


@dataclass(frozen=True)
class Policy(Record):
    """When a candidate may replace production (the training DAG's form sets each field).

    ``max_f1_drop``: on labelled held-back windows, the candidate's F1 may be at most this much below
    production's (0: no worse). ``min_flagged_share``/``max_flagged_share``: bounds on the share of held-back
    windows the candidate flags (labelled or not): a model flagging half the fleet, or nothing, is refused.
    """

    KIND: ClassVar[str] = "promotion policy"
    max_f1_drop: float = 0.0
    min_flagged_share: float = 0.0
    max_flagged_share: float = 0.1
    #: the false-alarm rate the version was calibrated to (the training run's ``false_alarm_rate``), if any: the
    #: share of held-back normal windows it flags may exceed it by at most ``FALSE_ALARM_SIGMAS`` binomial errors
    false_alarm_rate: float | None = None


@dataclass(frozen=True)
class Metrics(Record):
    """How a set of models did on held-back windows (``evaluation.metrics``): precision, recall and F1 only over
    labelled windows (None without)."""

    KIND: ClassVar[str] = "evaluation metrics"
    windows: int
    flagged: int
    flagged_share: float
    labelled: int
    anomalous: int
    precision: float | None
    recall: float | None
    f1: float | None
    normal_flagged_share: float | None = None


@dataclass(frozen=True)
class Coverage(Record):
    """Which of production's sensors the candidate leaves without a model (:func:`coverage`)."""

    KIND: ClassVar[str] = "coverage"
    production_version: str | None
    production_sensors: int
    candidate_models: int
    carried: int
    carried_from: str | None
    uncovered: int
    uncovered_sensors: tuple[str, ...]
    why: str | None


@dataclass(frozen=True)
class GateVerdict(Record):
    """The gate's verdict on a candidate version: staged as the training run's ``evaluation.json`` and kept in the
    version's manifest (``lineage.evaluation``). ``candidate`` and ``production`` are measured on the held-back
    windows of the sensors both cover; ``candidate_all`` on every held-back window of the candidate's sensors.
    ``coverage`` is absent from verdicts written before the gate judged it."""

    KIND: ClassVar[str] = "gate verdict"
    held_back_windows: int
    labelled_hours: tuple[str, ...]
    candidate_all: Metrics
    candidate: Metrics
    production: Metrics | None
    production_version: str | None
    policy: Policy
    promotable: bool
    reasons: tuple[str, ...]
    coverage: Coverage | None = None
    #: production's models left out of the comparison because they were fit on held-back windows of their sensor
    #: (0 in verdicts written before the gate checked it)
    production_fit_on_held_back: int = 0


def decide(summary: dict[str, object], policy: Policy) -> tuple[bool, list[str]]:
    """Does the evaluation ``summary`` (``evaluation.compare``, with ``coverage``) satisfy ``policy``? And the
    reasons when not.

    Coverage first: every sensor production scores must be scored by the version promoted (its own model, or
    production's carried into it: ``coverage``); a version that would drop sensors is refused whatever it scores.
    """
    reasons: list[str] = []
    coverage = summary.get("coverage")
    if isinstance(coverage, dict) and coverage.get("uncovered"):
        reasons.append(str(coverage["why"]))
    cand = summary["candidate_all"]
    assert isinstance(cand, dict)
    if not cand["windows"]:
        return False, [*reasons, "no held-back window of a sensor with a new model: nothing to evaluate the version on"]
    share = float(cand["flagged_share"])
    if share > policy.max_flagged_share:
        reasons.append(
            f"it flags {share:.1%} of the held-back windows, above max_flagged_share {policy.max_flagged_share:.1%}"
        )
    if share < policy.min_flagged_share:
        reasons.append(
            f"it flags {share:.1%} of the held-back windows, below min_flagged_share {policy.min_flagged_share:.1%}"
        )
    if policy.false_alarm_rate is not None:
        reasons += _false_alarms(cand, policy.false_alarm_rate)
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


def _false_alarms(cand: dict[str, object], target: float) -> list[str]:
    """The calibrated false-alarm rate judged: the share of labelled normal held-back windows flagged (of every
    held-back window where none is labelled) against ``target`` plus ``FALSE_ALARM_SIGMAS`` binomial errors."""
    labelled = cand.get("normal_flagged_share")
    measured = float(labelled if labelled is not None else cand["flagged_share"])  # type: ignore[arg-type]
    n = int(cand["labelled"]) - int(cand["anomalous"]) if labelled is not None else int(cand["windows"])  # type: ignore[call-overload]
    bound = target + FALSE_ALARM_SIGMAS * math.sqrt(target * (1 - target) / max(n, 1))
    if measured <= bound:
        return []
    what = "labelled normal" if labelled is not None else ""
    return [
        f"it flags {measured:.1%} of {n} held-back {what + ' ' if what else ''}windows, above its calibrated "
        f"false-alarm rate {target:.1%} by more than {FALSE_ALARM_SIGMAS:g} binomial errors (bound {bound:.1%})"
    ]


def coverage(
    candidate: Collection[tuple[str, str]],
    candidate_features: str,
    production: Collection[tuple[str, str]],
    production_version: str | None,
    production_features: str | None,
) -> dict[str, object]:
    """Which of production's sensors the candidate leaves without a model, and whether production's models can be
    carried into the new version for them (only within one feature set: a version is scored with one).

    ``carried``: sensors whose production model the registered version takes over (a subset run, or a sensor with
    too few windows this time); ``uncovered``: sensors it would drop (the gate refuses it then, saying ``why``).
    """
    missing = sorted(set(production) - set(candidate))
    names = [f"{d}/{t}" for d, t in missing]
    carry = bool(missing) and production_features == candidate_features
    out: dict[str, object] = {
        "production_version": production_version,
        "production_sensors": len(production),
        "candidate_models": len(candidate),
        "carried": len(missing) if carry else 0,
        "carried_from": production_version if carry else None,
        "uncovered": 0 if carry else len(missing),
        "uncovered_sensors": [] if carry else names[:MAX_NAMED],
        "why": None,
    }
    if missing and not carry:
        listed = ", ".join(names[:MAX_NAMED]) + (
            f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
        )
        out["why"] = (
            f"it has no model for {len(missing)} of the {len(production)} sensors production ({production_version}) "
            f"scores ({listed}) and cannot carry production's models for them: production's are of feature set "
            f"{production_features}, the new models of {candidate_features} (a version is scored with one set); "
            "train those sensors too, with the same feature set"
        )
    return out


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


def production_stack(storage: Storage, container: str, alias: str = registry.PRODUCTION_ALIAS) -> list[str]:
    """The versions ``alias`` was promoted through and not rolled back from, oldest first: the rollback path.

    Replays the history: a promotion (or a move to a version not on the path) pushes its version; a rollback to a
    version on the path drops everything after it. So rolling back twice goes two promotions back, never forward
    to the version just left. An alias set without a recorded move (``register(promote=True)``) is its last step.
    """
    stack: list[str] = []
    for move in history(storage, container, alias):
        version, before = str(move["version"]), move.get("previous")
        if move.get("action") == "rollback" and version in stack:
            del stack[len(stack) - stack[::-1].index(version) :]
            continue
        if before and (not stack or stack[-1] != before):
            stack.append(str(before))  # production then, set without a recorded move (register(promote=True))
        stack.append(version)
    now = current(storage, container, alias)
    if now is not None and (not stack or stack[-1] != now):
        stack.append(now)
    return stack


def rollback(
    storage: Storage, container: str, to: str | None = None, *, by: str, alias: str = registry.PRODUCTION_ALIAS
) -> dict[str, object]:
    """Point ``alias`` at ``to``, or (None) one step back along its promotion path (``production_stack``).

    A second rollback goes one more step back; at the first version of the path it refuses (``LookupError``)."""
    now = current(storage, container, alias)
    if to is None:
        path = production_stack(storage, container, alias)
        if len(path) < 2:
            raise LookupError(
                f"alias {alias!r} (now {now}) has no earlier version on its promotion path "
                f"({' -> '.join(path) or 'empty'}); name one: rollback --to <version>"
            )
        to = path[-2]
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
