"""Policy schedules: every form a policy may write becomes one of Airflow's stock timetables with the expected
run dates (monthly on the 31st falls back in February), the policy DAG serializes with it and a fresh Airflow
schedules it without any plugin, catchup decides whether missed runs are replayed, and bad frequencies are
policy errors naming the key."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from retention.policy import PolicyError, load_policy, parse_policy
from retention.timetables import day_crons, timetable_for
from tests.retention.test_policy import VALID

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    """An instant in UTC, as the scheduler passes them (pendulum)."""
    import pendulum

    return pendulum.datetime(*args, tz="UTC")


START = at(2026, 1, 1)


def policy_text(schedule: str, catchup: bool = False) -> str:
    text = VALID.replace('"0 3 * * *"', schedule)
    return text.replace("start_date: 2025-01-01", "start_date: 2026-01-01") + f"catchup: {str(catchup).lower()}\n"


def schedule_of(schedule: str):
    return parse_policy(policy_text(schedule).encode()).schedule


def core(timetable):
    """The scheduler's timetable for a DAG-side one (the SDK's timetables only describe a schedule)."""
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import Timetable

    return timetable if isinstance(timetable, Timetable) else decode_timetable(encode_timetable(timetable))


def run_dates(timetable, n: int = 6, start: dt.datetime = START, catchup: bool = True) -> list[dt.datetime]:
    """The logical dates of the first ``n`` scheduled runs from ``start``, as the scheduler asks for them."""
    from airflow.timetables.base import TimeRestriction

    timetable = core(timetable)
    restriction = TimeRestriction(earliest=start, latest=None, catchup=catchup)
    dates, last = [], None
    for _ in range(n):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None:
            break
        assert info.data_interval.start == info.data_interval.end == info.run_after  # fires at its time
        dates.append(info.logical_date)
        last = info.data_interval
    return dates


def cron_kind(timetable) -> tuple[str, list[str]]:
    """The stock timetable's class name and its crons."""
    crons = [t.expression for t in timetable.timetables] if hasattr(timetable, "timetables") else [
        timetable.expression]
    return type(timetable).__name__, crons


def plugins_in(folder: Path, monkeypatch):
    """Airflow's plugin scan over ``folder`` as its plugins folder (the caches cleared before and after)."""
    from airflow import plugins_manager, settings

    def reload():
        plugins_manager._get_plugins.cache_clear()
        plugins_manager.get_timetables_plugins.cache_clear()

    monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(folder))
    reload()
    yield plugins_manager
    monkeypatch.undo()
    reload()


@pytest.fixture
def no_plugins(monkeypatch, tmp_path):
    """An Airflow with an empty plugins folder: no timetable registered by any plugin."""
    yield from plugins_in(tmp_path / "no-plugins", monkeypatch)


@pytest.fixture
def repo_plugins(monkeypatch):
    """Airflow's plugin scan over the repository's plugins/ folder, as an Astro project configures it."""
    yield from plugins_in(REPO / "plugins", monkeypatch)


# ------------------------------------------------------------------------------------------ run dates


def test_monthly_on_the_31st_falls_back_to_the_last_day_of_shorter_months():
    timetable = timetable_for(schedule_of('{frequency: monthly, day: 31, at: "03:00"}'))
    assert cron_kind(timetable) == ("CronTriggerTimetable", ["0 3 L * *"])  # L: the month's last day
    assert run_dates(timetable, 7) == [
        at(2026, 1, 31, 3), at(2026, 2, 28, 3), at(2026, 3, 31, 3), at(2026, 4, 30, 3), at(2026, 5, 31, 3),
        at(2026, 6, 30, 3), at(2026, 7, 31, 3),
    ]
    assert run_dates(timetable, 3, start=at(2027, 12, 15)) == [at(2027, 12, 31, 3), at(2028, 1, 31, 3),
                                                                at(2028, 2, 29, 3)]  # a leap year
    assert "last day" in core(timetable).description


def test_monthly_on_the_30th_and_on_a_day_every_month_has():
    timetable = timetable_for(schedule_of('{frequency: monthly, day: 30, at: "00:15"}'))
    assert cron_kind(timetable) == ("MultipleCronTriggerTimetable", ["15 0 30 1,3-12 *", "15 0 L 2 *"])
    assert run_dates(timetable, 3) == [at(2026, 1, 30, 0, 15), at(2026, 2, 28, 0, 15), at(2026, 3, 30, 0, 15)]
    assert run_dates(timetable, 3, start=at(2028, 1, 31)) == [at(2028, 2, 29, 0, 15), at(2028, 3, 30, 0, 15),
                                                              at(2028, 4, 30, 0, 15)]  # a leap year
    # Days 1-28 exist in every month: a plain cron does it.
    timetable = timetable_for(schedule_of('{frequency: monthly, day: 15, at: "03:00"}'))
    assert type(timetable).__name__ == "CronTriggerTimetable" and timetable.expression == "0 3 15 * *"
    assert run_dates(timetable, 3) == [at(2026, 1, 15, 3), at(2026, 2, 15, 3), at(2026, 3, 15, 3)]


def test_yearly_on_29_february_runs_on_the_28th_in_other_years():
    timetable = timetable_for(schedule_of('{frequency: yearly, month: february, day: 29, at: "03:00"}'))
    assert cron_kind(timetable) == ("CronTriggerTimetable", ["0 3 L 2 *"])
    assert run_dates(timetable, 4) == [at(2026, 2, 28, 3), at(2027, 2, 28, 3), at(2028, 2, 29, 3), at(2029, 2, 28, 3)]
    assert "last day of the month, only in February" in core(timetable).description
    yearly = timetable_for(schedule_of('{frequency: yearly, month: 3, day: 31, at: "06:30"}'))
    assert run_dates(yearly, 2) == [at(2026, 3, 31, 6, 30), at(2027, 3, 31, 6, 30)]


def test_weekly_daily_and_once():
    weekly = timetable_for(schedule_of('{frequency: weekly, weekday: monday, at: "03:00"}'))
    assert run_dates(weekly, 3) == [at(2026, 1, 5, 3), at(2026, 1, 12, 3), at(2026, 1, 19, 3)]  # 1 Jan: a Thursday
    sunday = timetable_for(schedule_of('{frequency: weekly, weekday: Sunday, at: "23:59"}'))
    assert run_dates(sunday, 2) == [at(2026, 1, 4, 23, 59), at(2026, 1, 11, 23, 59)]
    daily = timetable_for(schedule_of('{frequency: daily, at: "03:00"}'))
    assert run_dates(daily, 3) == [at(2026, 1, 1, 3), at(2026, 1, 2, 3), at(2026, 1, 3, 3)]
    once = timetable_for(schedule_of("{frequency: once, at: 2026-03-01T02:00:00Z}"))
    assert run_dates(once) == [at(2026, 3, 1, 2)]
    assert run_dates(timetable_for(schedule_of('{frequency: once, at: "2026-03-01T04:00:00+02:00"}'))) == [
        at(2026, 3, 1, 2)]


@pytest.mark.parametrize(("schedule", "expected"), [
    ('"0 3 * * *"', [at(2026, 1, 1, 3), at(2026, 1, 2, 3), at(2026, 1, 3, 3)]),
    ('"30 2 * * 1-5"', [at(2026, 1, 1, 2, 30), at(2026, 1, 2, 2, 30), at(2026, 1, 5, 2, 30)]),
    ('"@hourly"', [at(2026, 1, 1, 0), at(2026, 1, 1, 1), at(2026, 1, 1, 2)]),
    ('"@daily"', [at(2026, 1, 1), at(2026, 1, 2), at(2026, 1, 3)]),
    ('"@weekly"', [at(2026, 1, 4), at(2026, 1, 11), at(2026, 1, 18)]),  # Sundays
    ('"@monthly"', [at(2026, 1, 1), at(2026, 2, 1), at(2026, 3, 1)]),
    ('"@yearly"', [at(2026, 1, 1), at(2027, 1, 1), at(2028, 1, 1)]),
    ('"@once"', [START]),  # one run, at the start date
])
def test_cron_strings_and_presets_are_explicit_timetables(schedule, expected):
    timetable = timetable_for(schedule_of(schedule))
    kind = "OnceTimetable" if schedule == '"@once"' else "CronTriggerTimetable"
    assert type(timetable).__name__ == kind
    if kind == "CronTriggerTimetable":
        assert not timetable.expression.startswith("@") and str(timetable.timezone) == "UTC"
    assert run_dates(timetable, 3) == expected


def test_null_means_manual_runs_only(tmp_path):
    from retention.factory import build_dag

    assert schedule_of("null") is None and timetable_for(None) is None
    path = tmp_path / "manual.yaml"
    path.write_text(policy_text("null"))
    dag = build_dag(load_policy(path))
    assert type(dag.timetable).__name__ == "NullTimetable" and not dag.timetable.can_be_scheduled
    assert run_dates(dag.timetable) == []


# --------------------------------------------------------------------------- the DAG and serialization

# Each schedule form, and the logical dates of its first four runs from 1 January 2026 (the policy's start).
KINDS = {
    "cron": ('"0 3 * * *"', [at(2026, 1, d, 3) for d in (1, 2, 3, 4)]),
    "preset": ('"@weekly"', [at(2026, 1, d) for d in (4, 11, 18, 25)]),
    "once_preset": ('"@once"', [START]),
    "once": ("{frequency: once, at: 2026-03-01T02:00:00Z}", [at(2026, 3, 1, 2)]),
    "daily": ('{frequency: daily, at: "03:00"}', [at(2026, 1, d, 3) for d in (1, 2, 3, 4)]),
    "weekly": ('{frequency: weekly, weekday: monday, at: "03:00"}', [at(2026, 1, d, 3) for d in (5, 12, 19, 26)]),
    "monthly": ('{frequency: monthly, day: 15, at: "03:00"}', [at(2026, m, 15, 3) for m in (1, 2, 3, 4)]),
    "monthly_31": ('{frequency: monthly, day: 31, at: "03:00"}',
                   [at(2026, 1, 31, 3), at(2026, 2, 28, 3), at(2026, 3, 31, 3), at(2026, 4, 30, 3)]),
    "monthly_30": ('{frequency: monthly, day: 30, at: "03:00"}',
                   [at(2026, 1, 30, 3), at(2026, 2, 28, 3), at(2026, 3, 30, 3), at(2026, 4, 30, 3)]),
    "monthly_29": ('{frequency: monthly, day: 29, at: "03:00"}',
                   [at(2026, 1, 29, 3), at(2026, 2, 28, 3), at(2026, 3, 29, 3), at(2026, 4, 29, 3)]),
    "yearly": ('{frequency: yearly, month: 3, day: 31, at: "03:00"}',
               [at(y, 3, 31, 3) for y in (2026, 2027, 2028, 2029)]),
    "yearly_29_feb": ('{frequency: yearly, month: 2, day: 29, at: "03:00"}',
                      [at(2026, 2, 28, 3), at(2027, 2, 28, 3), at(2028, 2, 29, 3), at(2029, 2, 28, 3)]),
    "null": ("null", []),
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_policy_dag_serializes_with_a_stock_timetable_and_no_plugin(kind, tmp_path, no_plugins):
    """As the DAG processor writes it and the scheduler reads it back, in an Airflow without plugins."""
    from airflow.serialization.serialized_objects import DagSerialization

    from retention.factory import build_dag

    schedule, expected = KINDS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(policy_text(schedule))
    dag = build_dag(load_policy(path))
    assert no_plugins.get_timetables_plugins() == {}
    data = DagSerialization.to_dict(dag)
    assert data["dag"]["timetable"]["__type"].startswith("airflow.timetables.")  # Airflow's own
    restored = DagSerialization.from_dict(data)
    assert restored.timetable.serialize() == core(dag.timetable).serialize()
    assert run_dates(restored.timetable, 4) == expected
    assert run_dates(dag.timetable, 4) == expected


def test_monthly_policy_dag_from_a_policy_file_runs_on_the_last_valid_day(tmp_path):
    from retention.factory import build_dag

    (tmp_path / "monthly.yaml").write_text(policy_text('{frequency: monthly, day: 31, at: "03:00"}', catchup=True))
    dag = build_dag(load_policy(tmp_path / "monthly.yaml"))
    assert cron_kind(dag.timetable) == ("CronTriggerTimetable", ["0 3 L * *"]) and dag.catchup is True
    assert run_dates(dag.timetable, 4, start=dag.start_date) == [
        at(2026, 1, 31, 3), at(2026, 2, 28, 3), at(2026, 3, 31, 3), at(2026, 4, 30, 3)]


def test_the_repositorys_plugins_folder_registers_nothing(repo_plugins):
    """An Astro project makes plugins/ Airflow's plugins folder: the scan finds no plugin there (the package is
    behind plugins/.airflowignore) and no import error, and the policies need none."""
    import inspect

    plugins, errors = repo_plugins._get_plugins()
    assert not [p for p in plugins if str(REPO / "plugins") in inspect.getfile(type(p))]
    assert not [f for f in errors if str(REPO / "plugins") in f]
    assert repo_plugins.get_timetables_plugins() == {}


PROBE_DAG = """\
\"\"\"A DAG (airflow) on a policy's timetable (monthly on the 30th), for dag.test in a fresh Airflow.\"\"\"
import datetime as dt

from airflow.sdk import DAG, task

from retention.policy import Frequency
from retention.timetables import timetable_for

schedule = timetable_for(Frequency(frequency="monthly", day=30, at="03:00"))
with DAG("retention_timetable_probe", schedule=schedule,
         start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False) as dag:

    @task
    def noop():
        return None

    noop()

if __name__ == "__main__":
    assert dag.test(logical_date=dt.datetime(2026, 1, 30, 3, tzinfo=dt.UTC)).state == "success"
    print("PROBE OK")
"""

# Policies whose days some months lack (once on a custom timetable), and the day each month runs on.
FALLBACK_POLICIES = {
    "monthly_31": ('{frequency: monthly, day: 31, at: "03:00"}', lambda day: day.day == last_day(day)),
    "monthly_30": ('{frequency: monthly, day: 30, at: "03:00"}', lambda day: day.day == min(30, last_day(day))),
    "yearly_29_feb": ('{frequency: yearly, month: 2, day: 29, at: "03:00"}',
                      lambda day: day.month == 2 and day.day == last_day(day)),
}


def last_day(day: dt.date) -> int:
    import calendar

    return calendar.monthrange(day.year, day.month)[1]


def test_a_fresh_airflow_without_plugins_runs_and_schedules_the_fallback_days(tmp_path):
    """As deployed, with an empty plugins folder: dag.test() runs a DAG on a policy's timetable, and the policy
    DAGs (dags/retention_policies.py) on days some months lack are serialized and read back by the scheduler
    side, which lists their next runs."""
    import os
    import shutil
    import subprocess
    import sys

    dags, policies, plugins = tmp_path / "dags", tmp_path / "policies", tmp_path / "plugins"
    dags.mkdir(), policies.mkdir(), plugins.mkdir()
    (dags / "probe.py").write_text(PROBE_DAG)
    shutil.copy(REPO / "dags" / "retention_policies.py", dags)
    for name, (schedule, _) in FALLBACK_POLICIES.items():
        (policies / f"{name}.yaml").write_text(policy_text(schedule).replace("id: inactive_contacts", f"id: {name}")
                                               .replace("table: contact", f"table: {name}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__RETENTION__POLICIES_DIR": str(policies),
        "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))

    def run(*args: str) -> str:
        out = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    run(airflow, "db", "migrate")
    assert "PROBE OK" in run(sys.executable, str(dags / "probe.py"))  # dag.test() also syncs the folder's DAGs
    listed = run(airflow, "dags", "list", "-o", "plain", "--columns", "dag_id")
    assert "retention_timetable_probe" in listed
    assert "No plugins loaded" in run(airflow, "plugins", "-o", "plain")
    for name, (_, runs_on) in FALLBACK_POLICIES.items():
        assert f"retention__{name}" in listed
        nxt = run(airflow, "dags", "next-execution", f"retention__{name}", "-n", "3")
        dates = [dt.date.fromisoformat(line[:10]) for line in nxt.splitlines()
                 if re.fullmatch(r"\d{4}-\d\d-\d\dT03:00:00\+00:00", line)]
        # The scheduler side deserialized the stock timetable: three runs, each on its month's day.
        assert len(dates) == 3 and all(runs_on(day) for day in dates), nxt


# --------------------------------------------------------------------------------------------- catchup


@pytest.mark.parametrize("schedule", ['{frequency: monthly, day: 31, at: "03:00"}',
                                      '{frequency: monthly, day: 30, at: "03:00"}',
                                      '{frequency: daily, at: "03:00"}', '"0 3 * * *"'])
def test_catchup_replays_missed_runs_only_when_set(schedule):
    from airflow.timetables.base import DataInterval, TimeRestriction

    timetable = core(timetable_for(schedule_of(schedule)))
    last = DataInterval.exact(at(2020, 1, 31, 3))  # the last scheduled run: long ago
    now = dt.datetime.now(UTC)
    replay = timetable.next_dagrun_info(
        last_automated_data_interval=last, restriction=TimeRestriction(earliest=START.replace(year=2019),
                                                                       latest=None, catchup=True))
    assert replay.logical_date == (at(2020, 2, 29, 3) if "monthly" in schedule else at(2020, 2, 1, 3))
    skip = timetable.next_dagrun_info(
        last_automated_data_interval=last, restriction=TimeRestriction(earliest=START.replace(year=2019),
                                                                       latest=None, catchup=False))
    # Without catchup only the latest missed time runs (it is at most one period ago).
    period = dt.timedelta(days=31 if "monthly" in schedule else 1)
    assert now - period < skip.logical_date <= now


def test_catchup_is_passed_per_policy(tmp_path):
    from retention.factory import build_dag

    for catchup in (False, True):
        path = tmp_path / f"catchup_{catchup}.yaml"
        path.write_text(policy_text('{frequency: daily, at: "03:00"}', catchup=catchup))
        assert build_dag(load_policy(path)).catchup is catchup


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("schedule", "message"), [
    ('{frequency: fortnightly, at: "03:00"}', "schedule.frequency: input should be 'once', 'daily'"),
    ('{at: "03:00"}', "schedule.frequency: required key is missing"),
    ('{frequency: monthly, day: 32, at: "03:00"}', "schedule.day: 32 is not a day of the month (1-31)"),
    ('{frequency: monthly, day: 0, at: "03:00"}', "schedule.day: 0 is not a day of the month"),
    ('{frequency: monthly, day: last, at: "03:00"}', "schedule.day: 'last' is not a day of the month"),
    ('{frequency: monthly, at: "03:00"}', "schedule.day: monthly needs a day of the month"),
    ('{frequency: yearly, month: 2, day: 30, at: "03:00"}', "schedule.day: February has no day 30 (at most 29)"),
    ('{frequency: yearly, month: april, day: 31, at: "03:00"}', "schedule.day: April has no day 31"),
    ('{frequency: yearly, month: 13, day: 1, at: "03:00"}', "schedule.month: 13 is not a month"),
    ('{frequency: yearly, day: 1, at: "03:00"}', "schedule.month: yearly needs a month"),
    ('{frequency: daily, day: 3, at: "03:00"}', "schedule.day: only for frequency: monthly or yearly"),
    ('{frequency: weekly, at: "03:00"}', "schedule.weekday: weekly needs a weekday (monday, tuesday"),
    ('{frequency: weekly, weekday: funday, at: "03:00"}', "schedule.weekday: 'funday' is not a weekday"),
    ('{frequency: daily, weekday: monday, at: "03:00"}', "schedule.weekday: only for frequency: weekly"),
    ('{frequency: daily}', "schedule.at: daily needs the time of the run, HH:MM in UTC"),
    ('{frequency: daily, at: "25:00"}', "schedule.at: '25:00' is not a time of day; expected HH:MM"),
    ('{frequency: daily, at: "3pm"}', "schedule.at: '3pm' is not a time of day"),
    ("{frequency: daily, at: 13:00}", "schedule.at: quote the time"),  # YAML 1.1 reads 13:00 as 780
    ('{frequency: once, at: "03:00"}', "schedule.at: '03:00' is not a date and time"),
    ("{frequency: once}", "schedule.at: once needs the date and time of the run"),
    ('{frequency: daily, at: "03:00", dya: 1}', "schedule: unknown key(s) dya (did you mean day?)"),
    ("42", "schedule: expected a cron string, a preset (@once"),
])
def test_bad_frequencies_are_policy_errors_naming_the_key(tmp_path, schedule, message):
    path = tmp_path / "bad.yaml"
    path.write_text(policy_text(schedule))
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value), str(exc.value)


@pytest.mark.parametrize("day", range(1, 32))
def test_every_monthly_day_runs_on_that_day_or_the_last_day_of_a_shorter_month(day):
    import calendar

    from airflow.sdk import CronTriggerTimetable, MultipleCronTriggerTimetable

    crons = day_crons(30, 4, day)
    timetable = (CronTriggerTimetable(crons[0], timezone="UTC") if len(crons) == 1
                 else MultipleCronTriggerTimetable(*crons, timezone="UTC"))
    months = [(y, m) for y in (2027, 2028) for m in range(1, 13)]  # 2028: a leap year
    assert run_dates(timetable, 24, start=at(2027, 1, 1)) == [
        at(y, m, min(day, calendar.monthrange(y, m)[1]), 4, 30) for y, m in months]


@pytest.mark.parametrize(("month", "day"), [(2, 29), (2, 28), (4, 30), (12, 31), (1, 1)])
def test_yearly_days_run_on_that_day_or_the_last_day_of_february(month, day):
    import calendar

    timetable = timetable_for(schedule_of(f'{{frequency: yearly, month: {month}, day: {day}, at: "23:59"}}'))
    assert run_dates(timetable, 4) == [
        at(y, month, min(day, calendar.monthrange(y, month)[1]), 23, 59) for y in (2026, 2027, 2028, 2029)]
