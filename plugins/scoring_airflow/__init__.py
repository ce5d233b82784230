"""Airflow adapters of the ``scoring`` package: the shard operator, its Batch trigger and its extra link.

Lives in ``plugins/`` (on ``sys.path`` of the dag-processor, workers, triggerer and ``dag.test``), imports only
Airflow's authoring API and light ``scoring`` modules at import time: the DAG file imports it at parse time.
"""
