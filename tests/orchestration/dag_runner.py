"""Run the fulcrum_daily DAG once with dag.test() in this process; print the task states as JSON.

    python dag_runner.py '<run conf as JSON>'

The caller sets the environment first (AIRFLOW_HOME, the metadata database, the DAG
folder, FULCRUM_PROJECT_DIR): Airflow reads its configuration at import.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import resetdb  # noqa: F401  (import check: the metadata layer is usable)

    conf = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    bag = DagBag()
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    run = bag.dags["fulcrum_daily"].test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("DAG-RESULT " + json.dumps({"run_state": str(run.state), "tasks": states}))


if __name__ == "__main__":
    main()
