"""The hour's steps, one module per DAG task, with blob storage in and out and ``contracts`` records between them.

``interval`` (which hours a run scores, its ``Hour``), ``landed`` (wait_for_windows), ``load``
(load_and_validate), ``plan`` (plan_shards), ``score`` (score_shard, in the shard process), ``commit`` and
``rescoring`` (what a subset rescoring keeps). Each step is idempotent: it writes to paths derived from the run
(``layout``) and overwrites what a failed try left, so Airflow retries and re-runs never double a row. Only
small records cross XCom; the data itself stays in the staging container.

Nothing is imported here, so ``from sensor_scoring.steps.interval import Hour`` stays cheap for the DAG glue.
"""
