"""Policy schedules as explicit Airflow timetables, all in UTC.

``timetable_for(policy.schedule)`` turns every form a policy may write into a timetable, never leaving a
string to Airflow's defaults: cron strings and presets become ``CronTriggerTimetable`` (the run fires at
the cron time; its data interval has zero width, so tasks take their cutoff from the logical date),
``@once`` becomes ``OnceTimetable`` (one run at the DAG's start date), Privacy Center's frequencies
become a cron (daily, weekly, and monthly/yearly days every month has), an ``EventsTimetable`` (once at a
given instant) or ``MonthlyOnDayTimetable`` (a day some months lack: the month's last day stands in).

``MonthlyOnDayTimetable`` is a custom timetable: the scheduler can only deserialize it when it is
registered by an Airflow plugin, which ``plugins/retention_timetables.py`` does. Import stays cheap:
Airflow's core timetable protocol is a few small modules.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import TYPE_CHECKING, Any

from airflow.timetables.base import DagRunInfo, DataInterval, Timetable

if TYPE_CHECKING:
    from airflow.timetables.base import TimeRestriction
    from pendulum import DateTime

    from retention.policy import Frequency

# Airflow's presets, written out: the timetable should not depend on how Airflow reads a string.
PRESET_CRONS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = tuple(calendar.month_name)[1:]  # January .. December (English whatever the locale: calendar's C names)


def _utc(value: dt.datetime) -> DateTime:
    import pendulum

    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return pendulum.instance(value.astimezone(dt.UTC))


class MonthlyOnDayTimetable(Timetable):
    """A run at ``hour:minute`` UTC on ``day`` of every month, or only of ``month`` (a yearly schedule).

    A month without that day runs on its last day instead: day 31 runs on 30 April and 28 (or 29)
    February; ``day=29, month=2`` runs on 29 February in leap years and 28 February otherwise. Like
    ``CronTriggerTimetable``, a run fires at its time and has a zero-width data interval (start = end =
    logical date). Without catchup, a DAG first runs the latest missed time, then each time on schedule.
    """

    def __init__(self, day: int, hour: int = 0, minute: int = 0, month: int | None = None) -> None:
        self.day, self.hour, self.minute, self.month = int(day), int(hour), int(minute), month
        if self.month is not None:
            self.month = int(self.month)

    # ------------------------------------------------------------------------------------ the dates

    def _fire(self, year: int, month: int) -> DateTime:
        import pendulum

        day = min(self.day, calendar.monthrange(year, month)[1])
        return pendulum.datetime(year, month, day, self.hour, self.minute, tz="UTC")

    def _months(self, year: int, month: int, step: int):
        """(year, month) from the given one on, forwards (step 1) or backwards (-1), matching ``month``."""
        while True:
            if self.month is None or month == self.month:
                yield year, month
            month += step
            if month == 13:
                year, month = year + 1, 1
            elif month == 0:
                year, month = year - 1, 12

    def _next(self, after: dt.datetime, *, inclusive: bool) -> DateTime:
        """The first run time at or after (``inclusive``) or strictly after ``after``."""
        after = _utc(after)
        for year, month in self._months(after.year, after.month, 1):
            at = self._fire(year, month)
            if at > after or (inclusive and at == after):
                return at
        raise AssertionError("unreachable")

    def _prev(self, before: dt.datetime) -> DateTime:
        """The last run time at or before ``before``."""
        before = _utc(before)
        for year, month in self._months(before.year, before.month, -1):
            at = self._fire(year, month)
            if at <= before:
                return at
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------ Airflow's Timetable API

    def next_dagrun_info(
        self, *, last_automated_data_interval: DataInterval | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        # The same rules as CronTriggerTimetable (run_immediately=False) with a zero-width interval.
        now = dt.datetime.now(dt.UTC)
        if restriction.catchup:
            if last_automated_data_interval is not None:
                at = self._next(last_automated_data_interval.end, inclusive=False)
            elif restriction.earliest is None:
                at = self._next(now, inclusive=False)
            else:
                at = self._next(restriction.earliest, inclusive=True)
        else:
            candidates = [self._prev(now)]
            if last_automated_data_interval is not None:
                candidates.append(self._next(last_automated_data_interval.end, inclusive=False))
            elif restriction.earliest is None:
                candidates.append(self._next(now, inclusive=False))
            if restriction.earliest is not None:
                candidates.append(self._next(restriction.earliest, inclusive=True))
            at = max(candidates)
        if restriction.latest is not None and at > restriction.latest:
            return None
        return DagRunInfo.exact(at)

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        return DataInterval.exact(_utc(run_after))

    def serialize(self) -> dict[str, Any]:
        return {"day": self.day, "hour": self.hour, "minute": self.minute, "month": self.month}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> MonthlyOnDayTimetable:
        return cls(data["day"], data.get("hour", 0), data.get("minute", 0), data.get("month"))

    def validate(self) -> None:
        from airflow.exceptions import AirflowTimetableInvalid

        if not 1 <= self.day <= 31:
            raise AirflowTimetableInvalid(f"day must be 1-31, got {self.day}")
        if not (0 <= self.hour <= 23 and 0 <= self.minute <= 59):
            raise AirflowTimetableInvalid(f"time must be 00:00-23:59, got {self.hour:02}:{self.minute:02}")
        if self.month is not None and not 1 <= self.month <= 12:
            raise AirflowTimetableInvalid(f"month must be 1-12, got {self.month}")
        if self.month is not None and self.day > calendar.monthrange(2000, self.month)[1]:  # 2000: a leap year
            raise AirflowTimetableInvalid(f"{MONTHS[self.month - 1]} never has a day {self.day}")

    @property
    def summary(self) -> str:
        when = f"{self.hour:02}:{self.minute:02} UTC"
        if self.month is None:
            return f"monthly on day {self.day} at {when}"
        return f"yearly on {self.day} {MONTHS[self.month - 1]} at {when}"

    @property
    def description(self) -> str:  # type: ignore[override]  # the protocol declares a plain attribute
        when = f"At {self.hour:02}:{self.minute:02} UTC"
        if self.month is None:
            return f"{when} on day {self.day} of every month (its last day in months without a day {self.day})"
        name = MONTHS[self.month - 1]
        fallback = min(self.day, calendar.monthrange(2001, self.month)[1])  # 2001: not a leap year
        extra = f" ({fallback} {name} in other years)" if fallback != self.day else ""
        return f"{when} on {self.day} {name} every year{extra}"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.day, self.hour, self.minute, self.month))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(day={self.day}, hour={self.hour}, minute={self.minute}, month={self.month})"


# ------------------------------------------------------------------------------ policy -> timetable


def timetable_for(schedule: str | Frequency | None) -> Any:
    """The timetable for a policy's (validated) ``schedule``; None means manual runs only."""
    from airflow.sdk import CronTriggerTimetable

    if schedule is None:
        return None
    if isinstance(schedule, str):
        if schedule == "@once":
            from airflow.sdk.definitions.timetables.simple import OnceTimetable

            return OnceTimetable()
        return CronTriggerTimetable(PRESET_CRONS.get(schedule, schedule), timezone="UTC")

    kind, at = schedule.frequency, schedule.at
    if kind == "once":
        # Core's EventsTimetable, not the SDK's: in Airflow 3.3.2 the SDK one serializes without the
        # "_summary" that core's deserialize requires, so the scheduler could not load the DAG.
        from airflow.timetables.events import EventsTimetable

        when = _utc(at)
        return EventsTimetable([when], description=f"Once, at {when.strftime('%Y-%m-%d %H:%M')} UTC")
    minute, hour = at.minute, at.hour
    if kind == "daily":
        cron = f"{minute} {hour} * * *"
    elif kind == "weekly":
        cron = f"{minute} {hour} * * {(WEEKDAYS.index(schedule.weekday) + 1) % 7}"  # cron: 0 = Sunday
    elif kind == "monthly":
        if schedule.day > 28:  # some months lack the day: the last-valid-day fallback
            return MonthlyOnDayTimetable(schedule.day, hour, minute)
        cron = f"{minute} {hour} {schedule.day} * *"
    elif kind == "yearly":
        if schedule.day > calendar.monthrange(2001, schedule.month)[1]:  # 29 February
            return MonthlyOnDayTimetable(schedule.day, hour, minute, month=schedule.month)
        cron = f"{minute} {hour} {schedule.day} {schedule.month} *"
    else:
        raise ValueError(f"unknown frequency {kind!r}")
    return CronTriggerTimetable(cron, timezone="UTC")
