"""The S3 remote (``remote: {type: s3}``) against a real S3 API: moto's server on loopback.

No S3 is reachable here, so the exchange runs against ``moto_server`` (an S3-compatible HTTP
server, as MinIO or Ceph would be; ``FULCRUM_REMOTE_ENDPOINT_URL`` points at it). A toy DVC
project of two stages goes through ``fulcrum.remote_run`` the way the Celery workers use it:
one checkout runs the first stage and pushes; a second checkout with an empty work tree runs
the second stage from the bucket alone; the run is promoted, and a third checkout ``sync``s
it and finds every stage up to date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fulcrum.airflow_env import REMOTE_ENDPOINT_ENV
from fulcrum.remote_run import Exchange, pipeline, promote, run_stage, sync
from serving.process import free_port
from tests.unit.test_remote_run import exchange_round_trip

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
BUCKET = "fulcrum-test"

DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps:
      - make.py
    outs:
      - data/a.txt
      - reports/make.json:
          cache: false
  grow:
    cmd: python grow.py
    deps:
      - grow.py
      - data/a.txt
    outs:
      - data/b.txt
"""
SCRIPTS = {
    "make.py": "import json, pathlib\n"
               "pathlib.Path('data').mkdir(exist_ok=True)\n"
               "pathlib.Path('data/a.txt').write_text('a' * 1000)\n"
               "pathlib.Path('reports').mkdir(exist_ok=True)\n"
               "pathlib.Path('reports/make.json').write_text(json.dumps({'rows': 1000}))\n",
    "grow.py": "import pathlib\n"
               "pathlib.Path('data/b.txt').write_text(pathlib.Path('data/a.txt').read_text().upper() + 'b')\n",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """``moto_server`` on a free loopback port with one bucket; AWS variables set for this module."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "fulcrum", "AWS_SECRET_ACCESS_KEY": "fulcrum", "AWS_DEFAULT_REGION": "us-east-1",
           REMOTE_ENDPOINT_ENV: url}
    saved = {k: os.environ.get(k) for k in env}
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("moto_server did not answer")
        os.environ.update(env)
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _dvc(root: Path, *args: str) -> str:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=root, check=True, capture_output=True, text=True).stdout


def _project(tmp_path: Path) -> Path:
    """A committed git + DVC project with the two stages and nothing run yet."""
    root = tmp_path / "origin"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "t")
    _dvc(root, "init", "-q")
    (root / "dvc.yaml").write_text(DVC_YAML)
    for name, text in SCRIPTS.items():
        (root / name).write_text(text)
    (root / "params.yaml").write_text("seed: 7\n")  # run_stage restores it after each stage
    (root / ".gitignore").write_text("/data\n/reports\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "toy")
    return root


def _clone(origin: Path, name: str) -> Path:
    dest = origin.parent / name
    _git(origin.parent, "clone", "-q", str(origin), str(dest))
    return dest


def test_the_exchange_round_trip_on_s3(s3_endpoint, tmp_path):
    exchange_round_trip(f"s3://{BUCKET}/exchange", tmp_path)


def test_stages_on_checkouts_that_share_only_the_s3_remote(s3_endpoint, tmp_path):
    origin = _project(tmp_path)
    url, run = f"s3://{BUCKET}/fulcrum", "manual__2026-11-26T10:00:00+00:00"
    first, second, third = (_clone(origin, n) for n in ("worker1", "worker2", "serving"))

    cmd = {name: ["sh", "-c", f"{BIN / 'dvc'} repro --single-item {name}"] for name in ("make", "grow")}
    assert run_stage(first, Exchange(url, run), "make", cmd["make"]) == 0
    # The second checkout has no data: it gets data/a.txt from the bucket through DVC.
    assert not (second / "data").exists()
    assert run_stage(second, Exchange(url, run), "grow", cmd["grow"]) == 0
    assert (second / "data" / "b.txt").read_text() == "A" * 1000 + "b"
    ex = Exchange(url, run)
    assert json.loads(ex.fs.cat_file(f"{ex.run}/ran/grow.json"))["workdir"] == str(second)
    assert sorted(ex.lock_entries()) == ["grow", "make"]

    assert promote(first, ex)["stages"] == 2
    got = sync(third, Exchange(url, "ignored"))
    assert got == {"stages": 2, "files": 1}  # reports/make.json travels as a file, the rest by DVC
    assert (third / "data" / "b.txt").read_text() == "A" * 1000 + "b"
    assert json.loads((third / "reports" / "make.json").read_text()) == {"rows": 1000}
    pipeline.cache_clear()
    status = _dvc(third, "status", "--json")
    assert json.loads(status) == {}, status  # every stage up to date in a checkout that ran none
    # The DVC cache lives in the bucket, content-addressed (dvc push, not a copy of the files).
    assert any("/cache/files/md5/" in p for p in ex.fs.find(f"{BUCKET}/fulcrum/cache"))
