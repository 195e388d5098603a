"""Airflow plugin registering the retention policies' custom timetable.

The DAG processor serializes each policy DAG and the scheduler deserializes it; a timetable outside
``airflow.timetables`` is only accepted when a plugin lists it, so ``MonthlyOnDayTimetable`` (monthly on
days 29-31, yearly on 29 February) is listed here. This file sits at the top of ``plugins/`` because
the plugin scan skips ``plugins/retention/`` (see ``plugins/.airflowignore``); Airflow must use this
folder as its plugins folder (``AIRFLOW__CORE__PLUGINS_FOLDER=<repo>/plugins``).
"""

from airflow.plugins_manager import AirflowPlugin

from retention.timetables import MonthlyOnDayTimetable


class RetentionTimetablesPlugin(AirflowPlugin):
    name = "retention_timetables"
    timetables = [MonthlyOnDayTimetable]
