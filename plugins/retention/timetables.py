"""Policy schedules as explicit Airflow timetables, all in UTC.

``timetable_for(policy.schedule)`` turns every form a policy may write into one of Airflow's stock
timetables, never leaving a string to Airflow's defaults: cron strings and presets become
``CronTriggerTimetable`` (the run fires at the cron time; its data interval has zero width, so tasks take
their cutoff from the logical date), ``@once`` becomes ``OnceTimetable`` (one run at the DAG's start date),
Privacy Center's frequencies become a cron or an ``EventsTimetable`` (once at a given instant).

A monthly day some months lack runs on the month's last day there, with cron's ``L`` (last day of the
month): day 31 is ``L`` every month, days 29 and 30 are a ``MultipleCronTriggerTimetable`` of that day in
the other months and ``L`` in February, and 29 February yearly is ``L`` of February. Stock timetables
serialize without a plugin, so every Airflow component loads the policy DAGs as they are.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def _utc(value: dt.datetime) -> DateTime:
    import pendulum

    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return pendulum.instance(value.astimezone(dt.UTC))


def day_crons(minute: int, hour: int, day: int, month: int | None = None) -> list[str]:
    """Crons for ``hour:minute`` on ``day`` of every month (or of ``month`` only), where a month without
    that day runs on its last day (``L``): 31 → 30 April and 28/29 February, 29 → 28 February in common
    years. Cron alone would skip those months."""
    months = [month] if month is not None else list(range(1, 13))
    lacking = [m for m in months if calendar.monthrange(2001, m)[1] < day]  # 2001: February has 28 days
    having = [m for m in months if m not in lacking]
    if not lacking:
        return [f"{minute} {hour} {day} {'*' if month is None else month} *"]
    if day == 31 and month is None:  # the months with a 31st end on it: the last day every month
        return [f"{minute} {hour} L * *"]
    crons = [f"{minute} {hour} {day} {_months(having)} *"] if having else []
    return [*crons, f"{minute} {hour} L {_months(lacking)} *"]


def _months(months: list[int]) -> str:
    """A cron month field: runs of consecutive months as ranges (1,3-12)."""
    runs: list[list[int]] = []
    for m in months:
        if runs and runs[-1][-1] == m - 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


# ------------------------------------------------------------------------------ policy -> timetable


def timetable_for(schedule: str | Frequency | None) -> Any:
    """The timetable for a policy's (validated) ``schedule``; None means manual runs only."""
    from airflow.sdk import CronTriggerTimetable, MultipleCronTriggerTimetable

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
        crons = [f"{minute} {hour} * * *"]
    elif kind == "weekly":
        crons = [f"{minute} {hour} * * {(WEEKDAYS.index(schedule.weekday) + 1) % 7}"]  # cron: 0 = Sunday
    elif kind == "monthly":
        crons = day_crons(minute, hour, schedule.day)
    elif kind == "yearly":
        crons = day_crons(minute, hour, schedule.day, schedule.month)
    else:
        raise ValueError(f"unknown frequency {kind!r}")
    if len(crons) == 1:
        return CronTriggerTimetable(crons[0], timezone="UTC")
    return MultipleCronTriggerTimetable(*crons, timezone="UTC")
