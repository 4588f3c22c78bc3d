from pathlib import Path

import pytest

from fulcrum.config import ConfigError, FulcrumConfig, LogsSource, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_repo_params_are_valid():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.source.type == "simulator"
    assert cfg.source.n_users >= 200_000
    assert cfg.source.shares() == [0.34, 0.24, 0.24, 0.18]
    assert cfg.source.arm_names() == ["control", "t1", "t2", "t1+t2"]
    assert cfg.policy.guardrails_for(cfg.source.responses) == [0.01, 0.01]


def test_policy_settings_are_checked(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("policy: {objective_weights: {usage_time: -1}}\n")
    with pytest.raises(ConfigError, match="objective_weights"):
        load_config(p)
    p.write_text("policy: {budget: 1.5}\n")
    with pytest.raises(ConfigError, match="budget"):
        load_config(p)
    cfg = load_config(p, {"policy.budget": 0.2, "policy.guardrails": {"usage_time": 1.0}})
    with pytest.raises(ConfigError, match="unknown responses"):  # the stage's own check, for a data set's names
        cfg.policy.guardrails_for(["watch", "views"])


def test_per_treatment_and_response_keys_must_name_the_data(tmp_path):
    """Found by probing: σ keys left from the simulator (t1, t2) for a user's own arms were silently ignored."""
    p = tmp_path / "p.yaml"
    p.write_text("seed: 3\n")
    with pytest.raises(ConfigError, match=r"decision.sigma names \['t9'\], which the data does not have "
                                          r"\(treatments: \['t1', 't2'\]\)"):
        load_config(p, {"decision.sigma": {"t1": 0.0, "t9": 0.1}})
    with pytest.raises(ConfigError, match=r"policy.guardrails names \['nope'\].*responses: \['usage_time'"):
        load_config(p, {"policy.guardrails": {"nope": 1.0}})
    with pytest.raises(ConfigError, match=r"cdum.xi names \['t3'\]"):
        load_config(p, {"cdum.xi": {"t3": 0.0}})
    ok = load_config(p, {"source.treatments": ["short", "long"], "source.combined_arms": [], "source.arm_shares": None,
                         "decision.sigma": {"long": 0.1}})
    assert ok.treatments() == ["short", "long"] and ok.decision.sigma_for(ok.treatments()) == [0.0, 0.1]


def test_defaults_fill_in(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("seed: 3\n")
    cfg = load_config(p)
    assert cfg.seed == 3 and cfg.source.treatments == ["t1", "t2"]


@pytest.mark.parametrize(
    "text, where",
    [
        ("source: {type: simulator, n_users: -5}", "source.n_users"),
        ("source: {type: simulator, arm_shares: [0.5, 0.5]}", "arm_shares needs 3 values"),
        ("source: {type: simulator, treatments: [control]}", "reserved for the control arm"),
        ("source: {type: nosuch}", "source"),
        ("colect: {}", "colect"),
        ("source: {type: simulator, requests: {candidates: 3, exposed: 5}}", "must not exceed"),
    ],
)
def test_bad_values_name_the_setting(tmp_path, text, where):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert where in str(e.value)
    assert str(p) in str(e.value)


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_are_yaml_typed(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("seed: 1\n")
    cfg = load_config(p, parse_overrides(["source.n_users=1234", "source.drift=0.05", "seed=9"]))
    assert cfg.source.n_users == 1234 and cfg.source.drift == 0.05 and cfg.seed == 9
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["nokey"])


def _logs(**over):
    d = {
        "type": "logs",
        "experiment": {
            "path": "e.csv", "user_id": "u", "timestamp": "ts",
            "treatment": {"column": "g", "values": {0: "control", 1: "t1"}},
            "responses": {"usage_time": "watch"},
        },
        "features": {"path": "f.csv", "user_id": "u", "timestamp": "ts", "numeric": {"x": "x"}},
    }
    d.update(over)
    return d


def test_logs_mapping_keys_become_text_and_need_control():
    src = LogsSource.model_validate(_logs())
    assert src.experiment.treatment.values == {"0": "control", "1": "t1"}
    assert src.experiment.treatment.arms() == ["control", "t1"]
    bad = _logs()
    bad["experiment"]["treatment"]["values"] = {"a": "t1", "b": "t2"}
    with pytest.raises(ValueError, match="control"):
        LogsSource.model_validate(bad)


def test_source_selector_picks_the_backend():
    cfg = FulcrumConfig.model_validate({"source": _logs()})
    assert isinstance(cfg.source, LogsSource)


def test_server_env_carries_the_serve_settings_the_service_reads_at_import():
    from fulcrum.config import ServeConfig
    from serving.process import server_env

    env = server_env({"KEEP": "x"}, ServeConfig(workers=3, access_log=True, metrics=False, tracing=True))
    assert env == {"KEEP": "x", "FULCRUM_SERVE_WORKERS": "3", "FULCRUM_ACCESS_LOG": "1",
                   "FULCRUM_METRICS": "0", "FULCRUM_TRACING": "1"}
    default = server_env({})
    assert default["FULCRUM_SERVE_WORKERS"] == "1" and default["FULCRUM_TRACING"] == "0"
    assert default["FULCRUM_METRICS"] == "1" and default["FULCRUM_ACCESS_LOG"] == "0"


def test_switching_the_source_type_explains_what_the_new_source_needs(tmp_path):
    """Found by probing: 25 raw pydantic errors, paths with the union tag (source.logs.features...)."""
    from fulcrum.config import ConfigError
    from fulcrum.params_edit import set_params

    params = tmp_path / "params.yaml"
    params.write_text(Path("params.yaml").read_text())
    before = params.read_text()
    with pytest.raises(ConfigError) as err:
        set_params(params, {"source.type": "logs"})
    text = str(err.value)
    assert params.read_text() == before
    assert "errors.pydantic.dev" not in text and "Extra inputs" not in text
    assert "  source.experiment: Field required" in text and "source.logs." not in text
    assert "source: unknown settings n_users, seed," in text
    assert "note: a logs source needs source.experiment" in text
    assert len(text.splitlines()) < 16


def test_error_paths_are_yaml_paths():
    from fulcrum.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"  source.features.timestamp: Input should be a valid string"):
        load_config(overrides={"source": {"type": "logs", "experiment": {
            "path": "e.csv", "user_id": "u", "timestamp": "t", "treatment": {"column": "g", "values": {0: "control"}},
            "responses": {"y": "y"}}, "features": {"path": "f.csv", "user_id": "u", "timestamp": 5,
                                                     "numeric": {"a": "a"}}}})


def test_set_params_returns_what_puts_the_file_back(tmp_path):
    """Existing keys come back with their values, null ones as null; the file is as it was, comments included."""
    from fulcrum.params_edit import set_params

    params = tmp_path / "params.yaml"
    params.write_text(Path("params.yaml").read_text())
    before = params.read_text()
    previous = set_params(params, {"decision.sigma.t2": 0.05, "seed": 11, "feast.production.redis_key_ttl_seconds": 60})
    assert previous == {"decision.sigma.t2": 0.0, "seed": 7, "feast.production.redis_key_ttl_seconds": None}
    set_params(params, previous)
    assert params.read_text() == before


def test_a_restore_removes_a_key_the_override_added(tmp_path):
    """Found by the both-families DAG run: a trigger σ for a treatment without a σ in params.yaml came back
    as null on restore, which validation refuses, so restore_params failed and the override stayed."""
    from fulcrum.config import load_config
    from fulcrum.params_edit import ABSENT, set_params

    text = Path("params.yaml").read_text()
    production = text[text.index("  production:\n    sql_alchemy_conn"):text.index("  distributed:")]
    params = tmp_path / "params.yaml"
    params.write_text(text.replace("sigma: {t1: 0.0, t2: 0.0}", "sigma: {}").replace(production, ""))
    before = params.read_text()
    previous = set_params(params, {"decision.sigma.t2": 0.05, "airflow.production.executor": "LocalExecutor"})
    assert previous == {"decision.sigma.t2": ABSENT, "airflow.production": ABSENT}  # the outermost missing part
    assert load_config(params).decision.sigma == {"t2": 0.05}
    set_params(params, previous)  # before the fix: sigma.t2 = null, refused by validation
    assert params.read_text() == before
    assert set_params(params, {"decision.sigma.t2": ABSENT}) == {}  # removing what is not there: nothing to undo
