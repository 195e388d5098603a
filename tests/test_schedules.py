"""Policy schedules: every form a policy may write becomes an explicit timetable with the expected run
dates (monthly on the 31st falls back in February), the policy DAG serializes with it, catchup decides
whether missed runs are replayed, and bad frequencies are policy errors naming the key."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from retention.policy import PolicyError, load_policy, parse_policy
from retention.timetables import MonthlyOnDayTimetable, timetable_for
from tests.test_policy import VALID

REPO = Path(__file__).resolve().parent.parent
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


@pytest.fixture
def registered(monkeypatch):
    """Airflow's plugin scan over the repository's plugins/ folder, as a deployment configures it."""
    from airflow import plugins_manager, settings

    def reload():
        plugins_manager._get_plugins.cache_clear()
        plugins_manager.get_timetables_plugins.cache_clear()

    monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(REPO / "plugins"))
    reload()
    yield plugins_manager
    monkeypatch.undo()
    reload()


# ------------------------------------------------------------------------------------------ run dates


def test_monthly_on_the_31st_falls_back_to_the_last_day_of_shorter_months():
    timetable = timetable_for(schedule_of('{frequency: monthly, day: 31, at: "03:00"}'))
    assert timetable == MonthlyOnDayTimetable(31, 3, 0)
    assert run_dates(timetable, 7) == [
        at(2026, 1, 31, 3), at(2026, 2, 28, 3), at(2026, 3, 31, 3), at(2026, 4, 30, 3), at(2026, 5, 31, 3),
        at(2026, 6, 30, 3), at(2026, 7, 31, 3),
    ]
    assert run_dates(timetable, 3, start=at(2027, 12, 15)) == [at(2027, 12, 31, 3), at(2028, 1, 31, 3),
                                                                at(2028, 2, 29, 3)]  # a leap year
    assert "last day" in timetable.description and timetable.summary == "monthly on day 31 at 03:00 UTC"


def test_monthly_on_the_30th_and_on_a_day_every_month_has():
    assert run_dates(timetable_for(schedule_of('{frequency: monthly, day: 30, at: "00:15"}')), 3) == [
        at(2026, 1, 30, 0, 15), at(2026, 2, 28, 0, 15), at(2026, 3, 30, 0, 15)]
    # Days 1-28 exist in every month: a plain cron does it, no custom timetable needed.
    timetable = timetable_for(schedule_of('{frequency: monthly, day: 15, at: "03:00"}'))
    assert type(timetable).__name__ == "CronTriggerTimetable" and timetable.expression == "0 3 15 * *"
    assert run_dates(timetable, 3) == [at(2026, 1, 15, 3), at(2026, 2, 15, 3), at(2026, 3, 15, 3)]


def test_yearly_on_29_february_runs_on_the_28th_in_other_years():
    timetable = timetable_for(schedule_of('{frequency: yearly, month: february, day: 29, at: "03:00"}'))
    assert timetable == MonthlyOnDayTimetable(29, 3, 0, month=2)
    assert run_dates(timetable, 4) == [at(2026, 2, 28, 3), at(2027, 2, 28, 3), at(2028, 2, 29, 3), at(2029, 2, 28, 3)]
    assert "28 February in other years" in timetable.description
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

KINDS = {
    "cron": '"0 3 * * *"',
    "preset": '"@weekly"',
    "once_preset": '"@once"',
    "once": "{frequency: once, at: 2026-03-01T02:00:00Z}",
    "daily": '{frequency: daily, at: "03:00"}',
    "weekly": '{frequency: weekly, weekday: monday, at: "03:00"}',
    "monthly": '{frequency: monthly, day: 31, at: "03:00"}',
    "yearly": '{frequency: yearly, month: 2, day: 29, at: "03:00"}',
    "null": "null",
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_policy_dag_serializes_with_its_timetable(kind, tmp_path, registered):
    from airflow.serialization.serialized_objects import DagSerialization

    from retention.factory import build_dag

    path = tmp_path / f"{kind}.yaml"
    path.write_text(policy_text(KINDS[kind]))
    dag = build_dag(load_policy(path))
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    expected = core(dag.timetable)
    assert type(restored.timetable) is type(expected)
    assert restored.timetable.serialize() == expected.serialize()
    assert restored.timetable.summary == expected.summary
    assert run_dates(restored.timetable, 4) == run_dates(dag.timetable, 4)


def test_monthly_policy_dag_from_a_policy_file_runs_on_the_last_valid_day(tmp_path):
    from retention.factory import build_dag

    (tmp_path / "monthly.yaml").write_text(policy_text('{frequency: monthly, day: 31, at: "03:00"}', catchup=True))
    dag = build_dag(load_policy(tmp_path / "monthly.yaml"))
    assert dag.timetable == MonthlyOnDayTimetable(31, 3, 0) and dag.catchup is True
    assert run_dates(dag.timetable, 4, start=dag.start_date) == [
        at(2026, 1, 31, 3), at(2026, 2, 28, 3), at(2026, 3, 31, 3), at(2026, 4, 30, 3)]


def test_the_custom_timetable_is_registered_by_the_plugin_in_plugins_folder(registered):
    from airflow.serialization.encoders import encode_timetable

    assert registered.get_timetables_plugins() == {
        "retention.timetables.MonthlyOnDayTimetable": MonthlyOnDayTimetable}
    assert not [f for f in registered.get_import_errors() if str(REPO / "plugins") in f]
    encoded = encode_timetable(MonthlyOnDayTimetable(31, 3, 0))
    assert encoded["__var"] == {"day": 31, "hour": 3, "minute": 0, "month": None}


def test_without_the_plugin_the_custom_timetable_does_not_serialize(monkeypatch, tmp_path):
    from airflow import plugins_manager, settings
    from airflow.serialization.encoders import encode_timetable

    monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(tmp_path))  # an empty plugins folder
    plugins_manager._get_plugins.cache_clear()
    plugins_manager.get_timetables_plugins.cache_clear()
    try:
        with pytest.raises(Exception, match="MonthlyOnDayTimetable"):
            encode_timetable(MonthlyOnDayTimetable(31, 3, 0))
    finally:
        monkeypatch.undo()
        plugins_manager._get_plugins.cache_clear()
        plugins_manager.get_timetables_plugins.cache_clear()


PROBE_DAG = """\
\"\"\"A DAG (airflow) on the custom timetable, for dag.test in a fresh Airflow.\"\"\"
import datetime as dt

from airflow.sdk import DAG, task

from retention.timetables import MonthlyOnDayTimetable

with DAG("retention_timetable_probe", schedule=MonthlyOnDayTimetable(31, 3, 0),
         start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False) as dag:

    @task
    def noop():
        return None

    noop()

if __name__ == "__main__":
    assert dag.test(logical_date=dt.datetime(2026, 1, 31, 3, tzinfo=dt.UTC)).state == "success"
    print("PROBE OK")
"""


def test_a_fresh_airflow_with_plugins_folder_runs_and_schedules_the_custom_timetable(tmp_path):
    """As deployed: Airflow's own plugin scan of plugins/ registers the timetable, dag.test() runs a DAG on
    it, and the policy DAG (dags/retention_policies.py) is serialized and read back by the scheduler side."""
    import os
    import shutil
    import subprocess
    import sys

    dags, policies = tmp_path / "dags", tmp_path / "policies"
    dags.mkdir(), policies.mkdir()
    (dags / "probe.py").write_text(PROBE_DAG)
    shutil.copy(REPO / "dags" / "retention_policies.py", dags)
    (policies / "monthly.yaml").write_text(
        policy_text('{frequency: monthly, day: 31, at: "03:00"}').replace("id: inactive_contacts", "id: monthly_31"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
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
    assert "retention__monthly_31" in listed and "retention_timetable_probe" in listed
    assert not run(airflow, "plugins", "-o", "plain").count("No plugins loaded")
    nxt = run(airflow, "dags", "next-execution", "retention__monthly_31", "-n", "3")
    dates = [line for line in nxt.splitlines() if re.fullmatch(r"\d{4}-\d\d-\d\dT03:00:00\+00:00", line)]
    # The scheduler side deserialized the custom timetable: three month ends at 03:00 (the last day of each).
    assert len(dates) == 3, nxt
    for line in dates:
        day = dt.date.fromisoformat(line[:10])
        assert (day + dt.timedelta(days=1)).day == 1, nxt


# --------------------------------------------------------------------------------------------- catchup


@pytest.mark.parametrize("schedule", ['{frequency: monthly, day: 31, at: "03:00"}', '{frequency: daily, at: "03:00"}',
                                      '"0 3 * * *"'])
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


def test_the_custom_timetable_validates_itself():
    from airflow.exceptions import AirflowTimetableInvalid

    MonthlyOnDayTimetable(31, 23, 59).validate()
    for bad in (MonthlyOnDayTimetable(32), MonthlyOnDayTimetable(1, 24), MonthlyOnDayTimetable(30, month=2)):
        with pytest.raises(AirflowTimetableInvalid):
            bad.validate()
    assert MonthlyOnDayTimetable.deserialize(MonthlyOnDayTimetable(29, 3, 0, 2).serialize()) == \
        MonthlyOnDayTimetable(29, 3, 0, 2)
