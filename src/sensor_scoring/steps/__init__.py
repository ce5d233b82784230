"""The hour's steps, one module per DAG task, with blob storage in and out and ``contracts`` records between them.

``landed`` (wait_for_windows), ``plan`` (plan_shards, plan_reads), ``load`` (read_windows, and the checks a shard
runs), ``score`` (score_shard, in the shard process), ``commit``, ``health`` (model_health) and ``training`` (the
training DAG's steps). What a run is and keeps (its ``Scope``, the fence, partial hours, rescoring) is
``sensor_scoring.runs``.
Each step is idempotent: it writes to paths derived from the run (``layout``) and overwrites what a failed try
left, so Airflow retries and re-runs never double a row. Only small records cross XCom; the data itself stays in
the staging container.

Nothing is imported here, so ``from sensor_scoring.steps.landed import windows_landed`` stays cheap for the DAG glue.
"""
