# agent-runner daemon image. Build: docker build -t agent-runner .
# Run:   docker run --init -e DATABASE_URL=postgresql://... -p 9464:9464 agent-runner
# Without DATABASE_URL it starts the embedded Postgres under /var/lib/agent-runner
# (mount a volume there to keep it); --init then reaps the server's exited processes.
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed uid, so that volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 agent-runner \
    && useradd --system --uid 10001 --gid agent-runner --no-create-home \
        --home-dir /var/lib/agent-runner --shell /usr/sbin/nologin agent-runner \
    && install -d -o agent-runner -g agent-runner -m 0700 /var/lib/agent-runner

WORKDIR /opt/agent-runner
# Only what the wheel is built from (pyproject.toml lists the packages).
COPY pyproject.toml README.md ./
COPY runner/ runner/
COPY agents/ agents/
COPY sql/ sql/
RUN pip install --no-cache-dir . && rm -rf build ./*.egg-info

# Numeric, so that runtimes can check it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/agent-runner
ENV RUNNER_METRICS_ADDR=0.0.0.0:9464 \
    RUNNER_DATA_DIR=/var/lib/agent-runner
EXPOSE 9464

# Exec form, no shell in between: the daemon is PID 1 (or tini's child with --init)
# and receives SIGTERM itself, stops claiming, and hands unfinished work back within
# RUNNER_SHUTDOWN_GRACE (30 s). Give `docker stop` the grace + 15 s (as the systemd
# unit's TimeoutStopSec does): -t 45.
STOPSIGNAL SIGTERM
# /healthz answers 200 while the daemon reaches Postgres. The slim image has no curl;
# the port follows RUNNER_METRICS_ADDR.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RUNNER_METRICS_ADDR', ':9464').rpartition(':')[2]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["agent-runner"]
CMD ["run"]
