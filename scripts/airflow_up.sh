#!/usr/bin/env bash
# Start Airflow for this project on 127.0.0.1 (make airflow): API server + UI, scheduler,
# DAG processor, with the repo's dags/ folder. The profile (params.yaml `airflow`) picks the
# metadata database: embedded = SQLite under .airflow/, production = PostgreSQL.
# Separate components instead of `airflow standalone`, whose log servers bind 0.0.0.0.
# Ctrl-C (or TERM) stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(pwd)/.venv/bin"
export PATH="$BIN:$PATH"
eval "$(fulcrum airflow-env)"
umask 077  # what Airflow writes here (the generated login included) is for this user only
mkdir -p "$AIRFLOW_HOME"
LOGS="$AIRFLOW_HOME/logs"; mkdir -p "$LOGS"
# The metadata URL without its query and with any password hidden (it may come from FULCRUM_AIRFLOW_SQL_ALCHEMY_CONN).
echo "Airflow home: $AIRFLOW_HOME  (metadata: $(printf '%s' "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN%%\?*}" | sed -E 's#(://[^:/@]*:)[^@]*@#\1***@#'))"
airflow db migrate > "$LOGS/migrate.log" 2>&1 || { cat "$LOGS/migrate.log"; exit 1; }

pids=()
stop() { echo "stopping Airflow"; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop INT TERM EXIT
airflow api-server --host "$AIRFLOW__API__HOST" --port "$AIRFLOW__API__PORT" > "$LOGS/api-server.log" 2>&1 & pids+=($!)
airflow scheduler --skip-serve-logs > "$LOGS/scheduler.log" 2>&1 & pids+=($!)
airflow dag-processor > "$LOGS/dag-processor.log" 2>&1 & pids+=($!)

for _ in $(seq 1 120); do
  if curl -fs "$AIRFLOW__API__BASE_URL/api/v2/monitor/health" > /dev/null 2>&1; then break; fi
  sleep 1
done
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
chmod 600 "$PASSWORDS" 2>/dev/null || true  # the generated login: readable by its owner only
cat <<MSG

Airflow is up: $AIRFLOW__API__BASE_URL   (logs: $LOGS)
Log in as: admin / $(python -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$PASSWORDS" 2>/dev/null || echo "see $PASSWORDS")
Trigger a run: DAGs -> fulcrum_daily -> Trigger (the form takes run_date, sigma, force_publish, source),
or with the REST API (README: "Airflow").
Ctrl-C stops Airflow.
MSG
wait
