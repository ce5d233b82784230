"""``python -m sensor_scoring <command>``: simulate, ingest-readings, train, score-shard, train-shard, rollback,
lineage, report.

Storage comes from ``SCORING_STORAGE`` (a connection string, Azurite's ``UseDevelopmentStorage=true`` by
default, or a local directory); container names from ``SCORING_CONTAINER_*``. Every setting is read once, at
start (``sensor_scoring.settings``): a bad value stops the command before it touches storage, naming the variable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sensor_scoring import settings as config

if TYPE_CHECKING:
    from sensor_scoring.tools.simulate import SimulationConfig


def _utc(text: str) -> datetime:
    from sensor_scoring.runs.scope import parse_utc

    return parse_utc(text)


def cmd_simulate(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    from sensor_scoring.storage import open_storage
    from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage

    containers = settings.containers
    cfg = SimulationConfig(devices=args.devices, tags=args.tags, seed=args.seed, anomaly_rate=args.anomaly_rate)
    to_eventhub = bool(args.eventhub or args.eventhub_connection_string)
    if args.follow is not None and not to_eventhub:
        raise SystemExit("simulate: --follow streams to an Event Hub; add --eventhub")
    if args.end is None and args.follow is None:
        raise SystemExit("simulate: --end is required (unless --follow)")
    if to_eventhub:
        return _simulate_to_eventhub(args, cfg, settings)
    return dict(
        simulate_to_storage(
            open_storage(settings.storage),
            cfg,
            _utc(args.start),
            _utc(args.end),
            windows_container=containers.windows,
            labels_container=containers.labels,
        )
    )


def _simulate_to_eventhub(
    args: argparse.Namespace, cfg: SimulationConfig, settings: config.Settings
) -> dict[str, object]:
    """Send readings to an Event Hub instead of landing windows: Stream Analytics makes the windows then."""
    from contextlib import closing
    from datetime import timezone

    from sensor_scoring.tools import eventhub

    try:
        target = eventhub.target_from(
            args.eventhub_connection_string or settings.eventhub_connection,
            args.eventhub_name or settings.eventhub_name,
        )
    except eventhub.EventHubConfigError as exc:
        raise SystemExit(f"simulate: {exc}") from None
    start = _utc(args.start)
    with closing(target.open()) as producer:  # the SDK's client closes on exit too: the protocol names close()
        if args.follow is not None:
            done = eventhub.follow(producer, cfg, start, interval_s=args.follow, now=lambda: datetime.now(timezone.utc))
        else:
            done = eventhub.send_simulated(producer, cfg, start, _utc(args.end))
    return {"eventhub": target.eventhub_name, "namespace": target.namespace, **done}


def cmd_ingest(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    from sensor_scoring.storage import open_storage
    from sensor_scoring.tools.ingest import ingest_readings_csv

    storage = open_storage(settings.storage)
    try:
        facts = ingest_readings_csv(
            storage, settings.containers.windows, args.file, strict=args.strict, report=args.rejected
        )
    except (OSError, ValueError) as exc:  # a missing file, another layout, strict with rejected lines
        raise SystemExit(f"ingest-readings: {exc}") from None
    if facts["rejected"]:
        logging.getLogger("sensor_scoring.ingest").warning(
            "%s of %s line(s) rejected %s, not landed; each with its line and reason in %s",
            facts["rejected"],
            facts["lines"],
            facts["rejected_by_reason"],
            facts["rejected_report"],
        )
    return facts


def cmd_train(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    """The training DAG's steps on the local backend (``steps.training.train_locally``): the same version from the
    same windows and params."""
    import getpass

    from sensor_scoring.models import registry
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps.training import NoTrainingData, policy_of, train_locally
    from sensor_scoring.storage import open_storage

    version = args.version or registry.new_version_name()
    run = Scope(
        storage=open_storage(settings.storage),
        containers=settings.containers,
        run_id=f"cli train {version} ({getpass.getuser()})",
        start=_utc(args.start),
        end=_utc(args.end),
    )
    params = {
        "holdout_hours": args.holdout_hours,
        "sensors_per_shard": args.sensors_per_shard,
        "nu": args.nu,
        "min_rows": args.min_rows,
        "threshold_mads": args.threshold_mads,
        "features": args.features,
        "adaptive_nu": _adaptive_nu(args),
        "refit": args.refit,
        "devices": args.devices,
        "tags": args.tags,
        "late_folders": args.late_folders,
        "promote": args.promote,
        "false_alarm_rate": _false_alarm_rate(args),
    }
    policy = policy_of(
        params
        | {
            "max_f1_drop": args.max_f1_drop,
            "min_flagged_share": args.min_flagged_share,
            "max_flagged_share": args.max_flagged_share,
            "gate_false_alarm_rate": args.gate_false_alarm_rate,
        }
    )
    try:
        outcome = train_locally(run, params, policy, version=version)
    except (NoTrainingData, FileExistsError) as exc:
        raise SystemExit(f"train: {exc}") from None
    features = registry.version_features(registry.read_manifest(run.storage, run.containers.models, version))
    return {**outcome, "features": features}


def _adaptive_nu(args: argparse.Namespace) -> bool:
    """``--adaptive-nu`` / ``--no-adaptive-nu``, else the package's default (imported here: fitting is heavy)."""
    from sensor_scoring.models.fitting import DEFAULT_ADAPTIVE_NU

    return DEFAULT_ADAPTIVE_NU if args.adaptive_nu is None else bool(args.adaptive_nu)


def _false_alarm_rate(args: argparse.Namespace) -> float | None:
    """``--false-alarm-rate``, its default unless ``--threshold-mads`` asks for the older threshold instead."""
    from sensor_scoring.models.fitting import DEFAULT_FALSE_ALARM_RATE

    if args.false_alarm_rate is not None and args.threshold_mads is not None:
        raise ValueError("give --false-alarm-rate or --threshold-mads, not both")
    if args.threshold_mads is not None:
        return None
    return DEFAULT_FALSE_ALARM_RATE if args.false_alarm_rate is None else float(args.false_alarm_rate)


def cmd_shard(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    """A shard command (``backends.SHARD_STEPS``: read-windows, score-shard, train-shard): what every backend runs."""
    from sensor_scoring.backends import shard_step
    from sensor_scoring.storage import open_storage

    return cast(dict[str, object], shard_step(args.command)(open_storage(settings.storage), args.spec).to_dict())


def cmd_rollback(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    import getpass

    from sensor_scoring.models import promotion
    from sensor_scoring.storage import open_storage

    storage = open_storage(settings.storage)
    try:
        return promotion.rollback(
            storage, settings.containers.models, args.to, by=f"cli rollback ({getpass.getuser()})"
        )
    except (LookupError, ValueError) as exc:
        raise SystemExit(f"rollback: {exc}") from None


def cmd_lineage(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    from sensor_scoring.models import promotion, registry
    from sensor_scoring.storage import open_storage

    storage = open_storage(settings.storage)
    version = registry.resolve_version(storage, settings.containers.models, args.version)
    return promotion.lineage(storage, settings.containers.models, version)


def cmd_report(args: argparse.Namespace, settings: config.Settings) -> dict[str, object]:
    """Write the self-contained HTML report (the fleet page's charts and the most drifting sensors) to ``--out``.

    Every argument is checked before storage is read, with the pages' own rules (``fleet.parse_bound``,
    ``check_range``): a bad time, a range over ``fleet.MAX_FLEET_HOURS`` or a missing output folder is one line
    on stderr and exit status 1, never a traceback."""
    from pathlib import Path

    from sensor_scoring.fleet import MAX_FLEET_HOURS, TOP_DRIFTING, RangeError, check_range, parse_bound
    from sensor_scoring.report import build_report
    from sensor_scoring.storage import open_storage

    out = Path(args.out)
    try:
        start, end = parse_bound(args.start, "--start"), parse_bound(args.end, "--end")
        check_range(start, end, MAX_FLEET_HOURS)
    except RangeError as exc:
        raise SystemExit(f"report: {exc}") from None
    if not 0 <= args.sensors <= TOP_DRIFTING:
        raise SystemExit(
            f"report: --sensors must be 0 to {TOP_DRIFTING} (the drifting sensors listed), got {args.sensors}"
        )
    if out.is_dir():
        raise SystemExit(f"report: --out {out} is a folder; name the HTML file to write")
    if not out.parent.is_dir():
        raise SystemExit(f"report: the folder of --out ({out.parent}) does not exist; create it first")
    try:
        text, facts = build_report(
            open_storage(settings.storage), settings.containers, start, end, sensors=args.sensors
        )
    except RangeError as exc:
        raise SystemExit(f"report: {exc}") from None
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"report: cannot write --out {out}: {exc.strerror or exc}") from None
    return {"out": str(out), "bytes": len(text.encode()), **facts}


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write a self-contained HTML report of anomalies, drift and quarantine")
    report.add_argument(
        "--start",
        required=True,
        help="ISO time of the first hour: a whole UTC hour (UTC if no offset; offsets converted)",
    )
    report.add_argument(
        "--end", required=True, help="ISO time, exclusive (a whole UTC hour, at most a week after --start)"
    )
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument(
        "--sensors", type=int, default=3, help="most drifting sensors given a section of their own (0-20)"
    )
    report.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    from sensor_scoring import features as feature_sets

    parser = argparse.ArgumentParser(
        prog="python -m sensor_scoring", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate sensors and land their 1-minute windows")
    sim.add_argument("--devices", type=int, default=10)
    sim.add_argument("--tags", type=int, default=3, help="sensors per device (1-8)")
    sim.add_argument(
        "--start",
        required=True,
        help="ISO time, UTC if no offset; floored to the hour when landing windows, exact when sending readings",
    )
    sim.add_argument(
        "--end", default=None, help="ISO time; windows ending before it are simulated (required unless --follow)"
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--anomaly-rate", type=float, default=0.15, help="share of sensor-hours with an anomaly")
    hub = sim.add_argument_group(
        "Event Hubs",
        "send each reading as a JSON event to an Event Hub (for Stream Analytics) instead of landing "
        "windows in storage; readings with --start <= ts < --end, or live with --follow",
    )
    hub.add_argument(
        "--eventhub",
        action="store_true",
        help="send to the Event Hub of $SCORING_EVENTHUB_CONNECTION / $SCORING_EVENTHUB_NAME",
    )
    hub.add_argument(
        "--eventhub-connection-string",
        default=None,
        help="prefer $SCORING_EVENTHUB_CONNECTION: a command line is visible to every user of the machine",
    )
    hub.add_argument("--eventhub-name", default=None, help="default $SCORING_EVENTHUB_NAME or the EntityPath")
    hub.add_argument(
        "--follow",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after --start, keep sending new readings every SECONDS (ignores --end)",
    )
    sim.set_defaults(func=cmd_simulate)

    ing = sub.add_parser("ingest-readings", help="aggregate a TS,Device,Tag,Value CSV into windows and land them")
    ing.add_argument("file")
    ing.add_argument(
        "--strict",
        action="store_true",
        help="land nothing and exit 1 if any line is rejected (default: land the readings taken, report the rest)",
    )
    ing.add_argument(
        "--rejected",
        default=None,
        metavar="PATH",
        help="CSV of the rejected lines (line, reason, error, text); default: beside FILE, <name>.rejected.csv",
    )
    ing.set_defaults(func=cmd_ingest)

    train = sub.add_parser(
        "train",
        help="the training DAG's steps here: gather, train shards, evaluate on held-back hours, register, "
        "promote by policy",
    )
    train.add_argument("--start", required=True)
    train.add_argument("--end", required=True, help="exclusive; the last --holdout-hours are evaluated on")
    train.add_argument("--version", default=None, help="default: v<UTC timestamp>")
    train.add_argument(
        "--promote", action="store_true", help="point the production alias at the new version if the policy holds"
    )
    train.add_argument("--holdout-hours", type=int, default=6, help="the range's last hours, held back for evaluation")
    train.add_argument("--sensors-per-shard", type=int, default=100, help="sensors trained together in one shard")
    train.add_argument("--devices", nargs="*", default=None, help="train only these device_ids (a subset run)")
    train.add_argument("--tags", nargs="*", default=None, help="train only these tags (a subset run)")
    train.add_argument("--late-folders", type=int, default=1)
    train.add_argument("--nu", type=float, default=0.02, help="OneClassSVM nu: bound on the share flagged in training")
    train.add_argument("--min-rows", type=int, default=30, help="sensors with fewer training windows get no model")
    train.add_argument(
        "--false-alarm-rate",
        type=float,
        default=None,
        help="the share of normal windows each model may flag: its threshold calibrated on its latest training "
        "windows, held back from its fit (split conformal; default 0.02, chosen by leave-one-source-out)",
    )
    train.add_argument(
        "--threshold-mads",
        type=float,
        default=None,
        help="instead of --false-alarm-rate: each model's anomaly threshold this many robust deviations below the "
        "median of its training decision values (e.g. 5)",
    )
    train.add_argument(
        "--features",
        default=feature_sets.DEFAULT_FEATURE_SET,
        choices=tuple(feature_sets.FEATURE_SETS),
        help="the new version's feature set (sensor_scoring.features; default window-v1: the window's own five "
        "aggregates; context-v1: level, log spread, log count, deviation from the trailing level)",
    )
    train.add_argument(
        "--adaptive-nu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each sensor's nu from its own training windows (at least --nu): more where its history holds more "
        "far-out windows (fitting.adaptive_nu; on by default, --no-adaptive-nu for --nu on every sensor)",
    )
    train.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register the models fit again on the whole range, held-back hours included (the gate judges the same "
        "parameters fit before them); --no-refit registers the judged models themselves",
    )
    train.add_argument("--max-f1-drop", type=float, default=0.0, help="policy: largest F1 loss against production")
    train.add_argument("--min-flagged-share", type=float, default=0.0, help="policy: least share of held-back flagged")
    train.add_argument("--max-flagged-share", type=float, default=0.1, help="policy: most share of held-back flagged")
    train.add_argument(
        "--gate-false-alarm-rate",
        type=float,
        default=None,
        help="policy: the share of held-back normal windows the version may flag, plus 3 binomial errors "
        "(default: the version's --false-alarm-rate, as the training DAG judges it)",
    )
    train.set_defaults(func=cmd_train)

    for name, what in (
        ("read-windows", "read one group of landed files and route its windows to their shards"),
        ("score-shard", "check and score one shard"),
        ("train-shard", "train one training shard (the training DAG's)"),
    ):
        shard = sub.add_parser(name, help=f"{what} (what every backend runs)")
        shard.add_argument("--spec", required=True, help="az://container/path of the spec")
        shard.set_defaults(func=cmd_shard)
    add_report_parser(sub)

    back = sub.add_parser("rollback", help="point the production alias back at an earlier model version")
    back.add_argument("--to", default=None, help="a registered version; default: the one before the current one")
    back.set_defaults(func=cmd_rollback)

    lin = sub.add_parser("lineage", help="where a model version came from and every move of the alias to or from it")
    lin.add_argument("version", nargs="?", default="production", help="a version or alias (default production)")
    lin.set_defaults(func=cmd_lineage)

    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = config.current()
    except ValueError as exc:  # names the variable, never a secret's value
        raise SystemExit(f"{args.command}: {exc}") from None
    result = args.func(args, settings)
    print(json.dumps(result, default=str))  # every command answers in one line of JSON
    return 0
