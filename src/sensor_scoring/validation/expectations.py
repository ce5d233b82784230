"""The great-expectations suite for landed windows: the one definition of a valid window.

Every row-level quarantine reason of validation comes from this suite's results (each expectation carries its
reason in ``meta``), so there is no second set of rules to drift apart from it. Importing this module imports
great-expectations (seconds, hundreds of MB): only ``sensor_scoring.validation`` does so, inside the function that
validates, which runs in the ``score_shard`` task alone (and training's read). DAG parsing and the other tasks
never load it.

Reason names are a contract (quarantine rows, manifests, alerts, docs/faults.md): add new ones, never rename.

Usage statistics stay off without touching the process environment: every validation runs in the one context of
:func:`_context`, created with ``analytics_enabled=False`` in its configuration. great-expectations 1.x turns
analytics off when either that variable or ``GX_ANALYTICS_ENABLED`` is false, and decides it when a context is
created, so a worker, ``dag.test`` and ``python -m sensor_scoring train`` (the processes that validate) all
send nothing, whatever their environment says (and the pinned 1.24.1 has no analytics code left). The scorer
image, which Batch nodes run, does not install great-expectations.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation, MulticolumnMapExpectation
from great_expectations.expectations.metrics import ColumnMapMetricProvider
from great_expectations.expectations.metrics.map_metric_provider import (
    MulticolumnMapMetricProvider,
    multicolumn_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.column_condition_partial import (
    column_condition_partial,  # from its own module: the package also has a submodule of that name
)
from great_expectations.expectations.row_conditions import Column

from sensor_scoring import settings
from sensor_scoring.contracts import ROW_REASONS, WINDOW_KEY
from sensor_scoring.settings import BOUNDS_ENV

log = logging.getLogger(__name__)

SUITE_NAME = "landed_windows"
#: The bounds when ``SCORING_PHYSICAL_BOUNDS`` (a file path or the JSON itself) is not set.
DEFAULT_BOUNDS_FILE = Path(__file__).with_name("physical_bounds.json")
#: Relative slack for ``min <= avg <= max``: an average of equal readings may differ from them by an ulp.
ORDER_TOLERANCE = 1e-9
VALUE_COLUMNS = ("value_avg", "value_min", "value_max", "value_std")
BOUNDED_COLUMNS = ("value_min", "value_avg", "value_max")

# Row-level reasons this suite can give, in reporting order: ``contracts.ROW_REASONS``.
#: Column-level expectations: a failure means the input's structure is wrong, and the run fails. Keys are
#: handed to great-expectations as Python objects (its pandas type check does not know pandas 3's string
#: dtypes) and window_end's type is not listed for the same reason (time zone-aware dtypes): both are cast,
#: with file and column named on failure, by ``sensor_scoring.windows.parse_window_file`` before validation.
SCHEMA_TYPES: dict[str, list[str] | None] = {
    "device_id": ["str"],
    "tag": ["str"],
    "window_end": None,
    "value_avg": ["float64"],
    "value_min": ["float64"],
    "value_max": ["float64"],
    "value_std": ["float64"],
    "reading_count": ["int64", "float64"],  # float only when a row's count is missing or fractional
}


# --- Two rules the core expectations cannot say exactly: NaN/inf as failures, and min <= avg <= max with an
# --- ulp of slack. Registered with great-expectations when this module is imported.


class ColumnValuesFinite(ColumnMapMetricProvider):
    condition_metric_name = "column_values.scoring_finite"
    filter_column_isnull = False  # a missing value is a failure here, not a row to skip

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        return pd.Series(
            np.isfinite(pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)),
            index=column.index,
        )


#: The expectations whose metrics judge missing values themselves (``filter_column_isnull = False``).
_NULLS_FAIL = ("expect_column_values_to_be_finite", "expect_column_values_to_be_whole_numbers")


class ExpectColumnValuesToBeFinite(ColumnMapExpectation):
    """Every value is a finite number: no null, NaN or infinity."""

    map_metric = "column_values.scoring_finite"
    success_keys = ("mostly",)


class ColumnValuesWholeNumber(ColumnMapMetricProvider):
    condition_metric_name = "column_values.scoring_whole_number"
    filter_column_isnull = False

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            return pd.Series(np.isfinite(values) & (np.mod(values, 1) == 0), index=column.index)


class ExpectColumnValuesToBeWholeNumbers(ColumnMapExpectation):
    """Every value is a whole number (a count): not null, not fractional."""

    map_metric = "column_values.scoring_whole_number"
    success_keys = ("mostly",)


class MulticolumnMiddleBetween(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.scoring_middle_between"
    condition_domain_keys = ("batch_id", "table", "column_list", "row_condition", "condition_parser", "ignore_row_if")
    condition_value_keys = ("tolerance",)

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, **kwargs: Any) -> pd.Series:
        tolerance = float(kwargs.get("tolerance") or 0.0)
        lo, mid, hi = (column_list.iloc[:, i].to_numpy(dtype=float, na_value=np.nan) for i in range(3))
        slack = tolerance * np.maximum(1.0, np.abs(hi))
        with np.errstate(invalid="ignore"):
            ok = (lo <= mid + slack) & (mid <= hi + slack)
        # a missing value is non_finite_value's business, not an ordering failure
        return pd.Series(ok | np.isnan(lo) | np.isnan(mid) | np.isnan(hi), index=column_list.index)


class ExpectColumnValuesMiddleBetweenOuter(MulticolumnMapExpectation):
    """For column_list [low, middle, high]: low <= middle <= high, with a relative ``tolerance``."""

    map_metric = "multicolumn_values.scoring_middle_between"
    success_keys = ("mostly", "tolerance")
    tolerance: float = 0.0
    ignore_row_if: Literal["all_values_are_missing", "any_value_is_missing", "never"] = "never"  # the base's type


# --- Aggregates no set of readings can have (contracts.ROW_REASONS single_reading_spread, std_exceeds_range). ---

#: Slack of ``std_exceeds_range``, relative to the larger of |value_min| and |value_max|: a producer computing the
#: variance in one pass (sum of squares minus square of sum) loses about sqrt(machine epsilon) = 1.5e-8 of the
#: values' magnitude to cancellation, so readings that are all equal may come with a std of that size; 1e-6 of the
#: magnitude stays far below any real spread the bound is meant to catch. Zero for values of 0.
STD_SLACK = 1e-6


def max_sample_std(count: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The largest sample standard deviation (``n - 1`` in the denominator: Stream Analytics' STDEV; STDEVP is the
    population's) that ``count`` readings within [low, high] can have: ``(high - low) / 2 * sqrt(n / (n - 1))``.

    Why: the population variance of values in an interval of width R is at most R**2 / 4 (Popoviciu's inequality),
    reached with half the readings at each end when n is even; the sample variance is the population's times
    n / (n - 1). For odd n the maximum is smaller, (R**2 / 4) * (n + 1) / n (one reading fewer at one end), so the
    even-n bound holds for every n >= 2 (Shiffler and Harsha, "Upper and lower bounds for the sample standard
    deviation", Teaching Statistics 2(3), 1980). Two readings: exactly R / sqrt(2). NaN for n < 2."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(count >= 2, count, np.nan)
        return (high - low) / 2 * np.sqrt(n / (n - 1))


class MulticolumnSpreadPossible(MulticolumnMapMetricProvider):
    """For [reading_count, value_min, value_max, value_std]: the spread is one that ``reading_count`` readings
    can have. ``single`` judges the windows of one reading (min == max and std == 0, exactly: one value is its own
    minimum, maximum and mean, and STDEV of one value is null, written as 0); otherwise the windows of two or more
    readings (std <= max_sample_std + slack). A missing or non-finite value passes: other rules judge it."""

    condition_metric_name = "multicolumn_values.scoring_spread_possible"
    condition_domain_keys = ("batch_id", "table", "column_list", "row_condition", "condition_parser", "ignore_row_if")
    condition_value_keys = ("single",)

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, **kwargs: Any) -> pd.Series:
        count, low, high, std = (column_list.iloc[:, i].to_numpy(dtype=float, na_value=np.nan) for i in range(4))
        unknown = ~(np.isfinite(count) & np.isfinite(low) & np.isfinite(high) & np.isfinite(std))
        with np.errstate(invalid="ignore"):
            if kwargs.get("single"):
                ok = (count != 1) | ((low == high) & (std == 0))
            else:
                bound = max_sample_std(count, low, high)
                slack = STD_SLACK * np.maximum(np.abs(low), np.abs(high)) + 1e-9 * bound
                ok = ~(count >= 2) | (count % 1 != 0) | (std <= bound + slack)
        return pd.Series(ok | unknown, index=column_list.index)


class ExpectSpreadToBePossible(MulticolumnMapExpectation):
    """For column_list [reading_count, value_min, value_max, value_std]: no impossible spread (``single``: the
    windows of one reading; else those of two or more)."""

    map_metric = "multicolumn_values.scoring_spread_possible"
    success_keys = ("mostly", "single")
    single: bool = False
    ignore_row_if: Literal["all_values_are_missing", "any_value_is_missing", "never"] = "never"


# --- Physical bounds: a packaged default per tag, overridable by the environment. ---

#: ``Bounds.max_readings_per_minute`` when the bounds do not say: 20 throughput units x 1,000 events/s x 60 s.
DEFAULT_MAX_READINGS_PER_MINUTE = 1_200_000.0


@dataclass(frozen=True)
class Bounds:
    """Inclusive [min, max] per tag for the window's value columns; ``default`` for unlisted tags."""

    default: tuple[float | None, float | None]
    tags: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    #: The most readings one sensor's 1-minute window can hold (None: unbounded): above it ``reading_count`` is
    #: ``reading_count_implausible``. Default 1,200,000: Event Hubs admits at most 1,000 events a second per
    #: throughput unit and 20 units per Standard namespace (its documented limits), so no sensor of a Standard
    #: namespace sends more than 20,000 readings a second; raise it for Premium or Dedicated namespaces.
    max_readings_per_minute: float | None = DEFAULT_MAX_READINGS_PER_MINUTE

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Bounds:
        def pair(entry: Any, where: str) -> tuple[float | None, float | None]:
            if not isinstance(entry, dict) or set(entry) - {"min", "max"}:
                raise ValueError(f"physical bounds {source}: {where} must be an object with min and/or max")
            lo, hi = entry.get("min"), entry.get("max")
            lo, hi = (None if v is None else float(v) for v in (lo, hi))
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"physical bounds {source}: {where} has min {lo} above max {hi}")
            return lo, hi

        tags = data.get("tags") or {}
        if not isinstance(tags, dict):
            raise ValueError(f"physical bounds {source}: 'tags' must be an object")
        most = data.get("max_readings_per_minute", DEFAULT_MAX_READINGS_PER_MINUTE)
        if most is not None and (isinstance(most, bool) or not isinstance(most, (int, float)) or not most >= 1):
            raise ValueError(f"physical bounds {source}: 'max_readings_per_minute' must be a number >= 1 or null")
        return cls(
            default=pair(data.get("default", {}), "default"),
            tags={str(tag): pair(entry, f"tag {tag!r}") for tag, entry in tags.items()},
            max_readings_per_minute=None if most is None else float(most),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "default": {"min": self.default[0], "max": self.default[1]},
            "tags": {t: {"min": lo, "max": hi} for t, (lo, hi) in sorted(self.tags.items())},
            "max_readings_per_minute": self.max_readings_per_minute,
        }


def load_bounds(setting: str | None = None) -> Bounds:
    """Bounds from ``setting`` or ``SCORING_PHYSICAL_BOUNDS`` (a file path or inline JSON), else the packaged file."""
    setting = setting if setting is not None else settings.current().physical_bounds
    if setting.strip().startswith("{"):
        return Bounds.from_dict(json.loads(setting), f"from {BOUNDS_ENV}")
    path = Path(setting) if setting.strip() else DEFAULT_BOUNDS_FILE
    return Bounds.from_dict(json.loads(path.read_text()), str(path))


# --- The suite. ---


def build_suite(start: datetime | None, end: datetime | None, bounds: Bounds) -> gx.ExpectationSuite:
    """The expectations for landed windows of the interval [start, end) (no interval rule when not given)."""
    E = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)

    def add(expectation: Any, reason: str) -> None:
        expectation.meta = {"reason": reason}
        suite.add_expectation(expectation)

    for column, types in SCHEMA_TYPES.items():
        add(E.ExpectColumnToExist(column=column), "schema")
        if types:
            add(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=types), "schema")
    for column in WINDOW_KEY:
        add(E.ExpectColumnValuesToNotBeNull(column=column), "null_key")
    for column in ("device_id", "tag"):
        add(E.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"), "null_key")
    if start is not None and end is not None:
        add(
            E.ExpectColumnValuesToBeBetween(
                column="window_end", min_value=pd.Timestamp(start), max_value=pd.Timestamp(end), strict_max=True
            ),
            "window_outside_interval",
        )
    add(ExpectColumnValuesToBeWholeNumbers(column="reading_count"), "reading_count_invalid")
    add(E.ExpectColumnValuesToBeBetween(column="reading_count", min_value=1), "reading_count_invalid")
    for column in VALUE_COLUMNS:
        add(ExpectColumnValuesToBeFinite(column=column), "non_finite_value")
    add(
        ExpectColumnValuesMiddleBetweenOuter(
            column_list=["value_min", "value_avg", "value_max"], tolerance=ORDER_TOLERANCE
        ),
        "avg_outside_min_max",
    )
    add(E.ExpectColumnValuesToBeBetween(column="value_std", min_value=0), "negative_std")
    spread = ["reading_count", "value_min", "value_max", "value_std"]
    add(ExpectSpreadToBePossible(column_list=spread, single=True), "single_reading_spread")
    add(ExpectSpreadToBePossible(column_list=spread, single=False), "std_exceeds_range")
    if bounds.max_readings_per_minute is not None:
        add(
            E.ExpectColumnValuesToBeBetween(column="reading_count", max_value=bounds.max_readings_per_minute),
            "reading_count_implausible",
        )
    for tag, (lo, hi) in sorted(bounds.tags.items()):
        if lo is None and hi is None:
            continue
        for column in BOUNDED_COLUMNS:
            add(
                E.ExpectColumnValuesToBeBetween(
                    column=column, min_value=lo, max_value=hi, row_condition=Column("tag") == tag
                ),
                "value_out_of_bounds",
            )
    lo, hi = bounds.default
    if lo is not None or hi is not None:
        others = Column("tag").is_not_in(sorted(bounds.tags)) if bounds.tags else None
        for column in BOUNDED_COLUMNS:
            add(
                E.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi, row_condition=others),
                "value_out_of_bounds",
            )
    add(E.ExpectCompoundColumnsToBeUnique(column_list=list(WINDOW_KEY)), "conflicting_duplicate")
    return suite


class SchemaViolation(ValueError):
    """A column is missing or has the wrong type: the input's structure is wrong, not some rows."""


@dataclass
class SuiteResult:
    """Per-row reasons (``;``-joined, ``""`` for a valid row) and a JSON-able summary of each expectation."""

    reasons: pd.Series
    expectations: list[dict[str, Any]]
    success: bool
    seconds: float


_CONTEXT: Any = None


def _context() -> Any:
    """One ephemeral (in-memory, file-free) context per process: no usage statistics, no progress bars in task
    logs. Both are in the configuration it is created with, since great-expectations acts on it at creation."""
    global _CONTEXT
    if _CONTEXT is None:
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        _CONTEXT = gx.get_context(
            mode="ephemeral",
            project_config=DataContextConfig(
                analytics_enabled=False,
                store_backend_defaults=InMemoryStoreBackendDefaults(),
                progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            ),
        )
    return _CONTEXT


def run_suite(
    windows: pd.DataFrame, start: datetime | None = None, end: datetime | None = None, bounds: Bounds | None = None
) -> SuiteResult:
    """Validate ``windows`` with the suite; each failing row gets the reasons of the expectations it failed.

    Row positions come from great-expectations' ``unexpected_index_list`` (result format COMPLETE), on a frame
    with a fresh 0..n-1 index, so they map straight back to ``windows``' rows.
    """
    began = time.perf_counter()
    bounds = bounds or load_bounds()
    frame = windows.reset_index(drop=True)
    for column in ("device_id", "tag"):
        if column in frame.columns:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    context = _context()
    name = f"hour-{time.time_ns()}"
    source = context.data_sources.add_pandas(name)
    batch = (
        source.add_dataframe_asset("windows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = build_suite(start, end, bounds)
    try:
        result = batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "partial_unexpected_count": 0,
                "return_unexpected_index_query": False,
            },
        )
    finally:
        context.data_sources.delete(name)
    order = list(ROW_REASONS)
    failed: dict[int, set[str]] = {}
    summaries = []
    for item in result.results:
        config = item.expectation_config
        reason = (config.meta or {}).get("reason", "schema")
        info = item.result or {}
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"expectation {config.type} {config.kwargs} could not run: "
                f"{item.exception_info.get('exception_message')}"
            )
        indexes = info.get("unexpected_index_list") or []
        success, unexpected = bool(item.success), info.get("unexpected_count", 0 if item.success else None)
        column = config.kwargs.get("column")
        if success and config.type in _NULLS_FAIL and len(frame) and column in frame and frame[column].isna().all():
            # great-expectations passes a column map expectation vacuously when no value is non-null, even with
            # filter_column_isnull False: here every row fails, as it does beside one non-null value (a shard of
            # one window, or an hour whose producer sent no value, would otherwise score NaN)
            success, unexpected, indexes = False, len(frame), list(range(len(frame)))
        summaries.append(
            {
                "expectation": config.type,
                "kwargs": {k: str(v) for k, v in config.kwargs.items() if k not in ("batch_id",)},
                "reason": reason,
                "success": success,
                "element_count": info.get("element_count"),
                "unexpected_count": unexpected,
            }
        )
        if success:
            continue
        if reason == "schema":
            column = config.kwargs.get("column")
            observed = info.get("observed_value")
            raise SchemaViolation(
                f"column {column}: {config.type} failed"
                + (f" (observed type {observed}, expected one of {config.kwargs.get('type_list')})" if observed else "")
            )
        for index in indexes:
            position = int(index) if not isinstance(index, dict) else int(next(iter(index.values())))
            failed.setdefault(position, set()).add(reason)
    reasons = pd.Series("", index=windows.index, dtype="object")
    if failed:
        positions = np.fromiter(failed, dtype=np.int64)
        reasons.iloc[positions] = [";".join(r for r in order if r in failed[p]) for p in failed]
    return SuiteResult(
        reasons=reasons, expectations=summaries, success=bool(result.success), seconds=time.perf_counter() - began
    )
