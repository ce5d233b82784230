"""What a run is and what it keeps, shared by the steps: its ``Scope`` (``scope``: storage, containers, run id and
interval), the commit fence (``fence``), partial hours (``partial``), what a subset rescoring or a re-run keeps
(``rescoring``) and the steps' common helpers (``common``). None of these is a DAG task: those are
``sensor_scoring.steps``.

Nothing is imported here, so ``from sensor_scoring.runs.scope import Scope`` stays cheap for the DAG glue.
"""
