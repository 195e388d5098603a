"""Salesforce data retention on Airflow: policies, the DAG factory, hooks, operators and store logic.

Kept out of Airflow's plugin scan by ``plugins/.airflowignore``; importable because Airflow puts
``plugins/`` on ``sys.path``. Keep imports here cheap: every DAG parse and task process loads it.
"""
