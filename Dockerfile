# Images of the project (FIRST DRAFT: not yet built on CI; to be hardened).
#
#   docker build --target airflow -t sensor-scoring-airflow .   # Airflow 3.3.2 + the lock + scoring + dags
#   docker build --target scorer  -t sensor-scoring-scorer  .   # slim image for Azure Batch shard tasks
#
# Without --target the last stage (scorer) is built. docker-compose.yaml builds both targets.
# BuildKit is assumed (the default builder since Docker 23); see the plugins COPY below.


# ---------------------------------------------------------------------------------------------------
# airflow: the official Airflow image plus this project's lock, package, dags and plugins.
# ---------------------------------------------------------------------------------------------------
FROM apache/airflow:3.3.2-python3.11 AS airflow

# Directories written below, owned by the airflow user. Group 0 and group-writable, as the base
# image does for its own folders, so the image still runs under an arbitrary uid with gid 0.
USER root
RUN install -d -o airflow -g 0 -m 775 /opt/sensor-scoring /opt/airflow/dags /opt/airflow/plugins /opt/airflow/logs
USER airflow

# The lock alone first, so that code changes do not re-run the long install.
COPY --chown=airflow:0 requirements.txt /opt/sensor-scoring/requirements.txt
# The lock is installed as-is, as the airflow user (the base image sets PIP_USER, so it lands in
# ~airflow/.local). This does not upgrade or downgrade Airflow: requirements.txt pins
# apache-airflow==3.3.2 (and apache-airflow-core / apache-airflow-task-sdk) itself, which is the version
# of this base image, so pip keeps the installed Airflow and only moves the other packages to the
# versions the project tested together. "apache-airflow==${AIRFLOW_VERSION}" (AIRFLOW_VERSION is set by the
# base image) is the pattern of Airflow's image docs: should the base tag and the lock ever disagree, pip
# fails here on the conflicting pins instead of quietly installing another Airflow.
# Packages of the base image that the lock does not name (other providers, FAB, psycopg2) are left alone.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/sensor-scoring/requirements.txt

# The project itself, without dependencies: every one of them came from the lock above.
# (README.md, named as readme in pyproject.toml, is not copied: it only feeds the long description, and
# setuptools builds without it, with a warning. Copying it would rebuild this layer on every README edit.)
COPY --chown=airflow:0 pyproject.toml /opt/sensor-scoring/pyproject.toml
COPY --chown=airflow:0 scoring/ /opt/sensor-scoring/scoring/
RUN pip install --no-cache-dir --no-deps /opt/sensor-scoring

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
# plugins/ holds no file yet, and git does not keep an empty directory, so a fresh clone has no plugins/
# and a plain "COPY plugins/" would fail there. The one-character wildcard makes the source optional
# (BuildKit allows a wildcard that matches nothing); when plugins/ exists, its contents are copied.
COPY --chown=airflow:0 plugin[s] /opt/airflow/plugins/


# ---------------------------------------------------------------------------------------------------
# scorer-build: a virtualenv with only what `python -m scoring score-shard` imports, at the lock's versions.
# ---------------------------------------------------------------------------------------------------
FROM python:3.11-slim AS scorer-build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

COPY requirements.txt ./
# Subset of the lock: the five direct dependencies of the shard path (numpy, pandas, pyarrow, scikit-learn,
# azure-storage-blob), with the whole lock as a *constraints* file. pip then resolves their dependencies
# itself and every version comes from the lock. This was chosen over the two alternatives:
#  - a `grep -E` of pins out of requirements.txt would have to name every transitive dependency by hand
#    (18 of them today: scipy, joblib, threadpoolctl, narwhals, cloudpickle, azure-core, requests, cryptography,
#    cffi, ...), in the lock's own spelling; a new dependency in a later lock would be silently missed, or
#    installed unpinned;
#  - installing all of requirements.txt would put Airflow and ~200 packages into a Batch task image.
# The check after the install makes the subset provably "from the same lock": it fails the build if any
# installed distribution is not pinned in requirements.txt at exactly that version (names compared
# case- and separator-insensitively). --only-binary: the slim image has no compiler, so fail fast instead
# of trying to build an sdist.
RUN pip install --only-binary=:all: -c requirements.txt \
        numpy pandas pyarrow scikit-learn azure-storage-blob \
 && sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d' requirements.txt | tr 'A-Z_.' 'a-z--' > /tmp/lock-pins.txt \
 && pip freeze --all | tr 'A-Z_.' 'a-z--' | grep -vE '^(pip|setuptools|wheel)==' > /tmp/installed.txt \
 && if grep -vxF -f /tmp/lock-pins.txt /tmp/installed.txt; then \
        echo "^ installed but not pinned at this version in requirements.txt" >&2; exit 1; \
    fi

# The project, without dependencies (all installed above); the import check runs isolated (-I) so that it
# imports the installed package, not ./scoring.
COPY pyproject.toml ./
COPY scoring/ ./scoring/
RUN pip install --no-deps . \
 && python -I -c "import scoring.pipeline, scoring.simulate"


# ---------------------------------------------------------------------------------------------------
# scorer: what an Azure Batch task runs: `score-shard --spec az://...` (also used by the compose simulator).
# ---------------------------------------------------------------------------------------------------
FROM python:3.11-slim AS scorer

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Same base image as scorer-build, so the virtualenv's interpreter links stay valid when copied.
COPY --from=scorer-build /opt/venv /opt/venv

# Non-root; a numeric USER so that runtimes checking runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 scorer \
 && useradd --system --uid 10001 --gid scorer --create-home --home-dir /home/scorer scorer
USER 10001:10001
WORKDIR /home/scorer

# Storage comes from SCORING_STORAGE (a connection string), container names from SCORING_CONTAINER_*.
ENTRYPOINT ["python", "-m", "scoring"]
CMD ["--help"]
