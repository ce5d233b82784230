"""Development tooling, not installed and not in any image: the demo, the dev stack (PostgreSQL + Airflow
components + Azurite), and the helpers the tests and benchmarks share."""
