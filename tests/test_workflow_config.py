"""Bad workflow configs fail before any job starts, with a message naming the offending key.

Each case is dry-run through the ``snakemake -n`` command line (``studies.snakemake``): it must
exit non-zero with the workflow's own error naming the key, before any DAG is built.
A valid control config must dry-run, so the failures are about the mutated key.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from studies import snakemake

ROOT = Path(__file__).resolve().parents[1]
SHARED_PUBLISHED = ROOT.parent / "shared" / "data" / "published"

BASE = {
    "results_dir": "results",
    "seeds": 2,
    "grid": [
        {
            "envs": ["cartpole-swingup"],
            "agents": ["bro"],
            "utd": [1, 2],
            "widths": [32, 64],
            "batch_sizes": [64],
            "lrs": [3.0e-4],
        }
    ],
    "train": {"steps": 2000, "warmup_steps": 500, "eval_interval": 500, "replay_size": 2000},
    "analysis": {"envs": {"cartpole-swingup": {"j_min": 100.0}}},
}


def dry_run(tmp_path: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    return snakemake(tmp_path, config, "-n", "--quiet", "rules", *extra, check=False)


def mutate(path: str, value) -> dict:
    """BASE with the value at a dotted path (list indices as ints) replaced."""
    config = copy.deepcopy(BASE)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = config
    for key in keys[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    node[keys[-1]] = value
    return config


def test_valid_control_config_dry_runs(tmp_path):
    proc = dry_run(tmp_path, BASE)
    assert proc.returncode == 0, proc.stderr
    # 2 utd x 2 widths, both seeds in one job
    assert any(line.split() == ["train", "4"] for line in proc.stdout.splitlines()), proc.stdout


def test_mixed_bro_and_simbav2_grid_dry_runs(tmp_path):
    """One block of both agents: 2 agents x 2 utd x 2 widths train jobs; SimbaV2's jobs get only
    SimbaV2's flags, BRO's only BRO's (a shared key left null: each agent's own default)."""
    config = mutate("grid.0.agents", ["bro", "simbav2"])
    config["train"] = {**BASE["train"], "actor_width": None, "init_temperature": None}
    proc = snakemake(tmp_path, config, "-n", "-p", check=False)
    assert proc.returncode == 0, proc.stderr
    out = (proc.stdout + proc.stderr).splitlines()
    assert any(line.split() == ["train", "8"] for line in out), proc.stdout + proc.stderr
    commands = [line for line in out if "--agent" in line]
    simba = [c for c in commands if "--agent simbav2" in c]
    assert len(simba) == 4 and len(commands) == 8
    assert all("--action-repeat 2" in c and "--n-quantiles" not in c for c in simba)
    assert not any("--actor-width" in c or "--n-atoms" in c for c in commands if c not in simba)


BAD_CASES = {
    "unknown_env": (mutate("grid.0.envs", ["cartpole-swingupp"]), ["grid[0].envs", "unknown env"]),
    "utd_zero": (mutate("grid.0.utd", [1, 0]), ["grid[0].utd[1]"]),
    "utd_negative": (mutate("grid.0.utd", [-0.5]), ["grid[0].utd[0]"]),
    "non_integer_width": (mutate("grid.0.widths", [64.5]), ["grid[0].widths[0]"]),
    "batch_larger_than_replay": (
        mutate("grid.0.batch_sizes", [64, 4096]),
        ["grid[0].batch_sizes", "replay"],
    ),
    "empty_utd_list": (mutate("grid.0.utd", []), ["grid[0].utd"]),
    "empty_study": (mutate("grid", []), ["'grid'", "empty"]),
    "unknown_agent": (mutate("grid.0.agents", ["sac"]), ["grid[0].agents[0]"]),
    "simbav2_step_not_a_multiple_of_its_action_repeat": (
        {
            **mutate("grid.0.agents", ["bro", "simbav2"]),
            "train": {**BASE["train"], "eval_interval": 501},
        },
        ["train.eval_interval", "action_repeat"],
    ),
    "j_min_not_below_j_max": (
        mutate("analysis.envs.cartpole-swingup", {"j_min": 500.0, "j_max": 400.0}),
        ["analysis.envs.cartpole-swingup.j_min"],
    ),
    "unknown_published_zip": (
        mutate("published", {"zips": {"not_a_zip": {}}}),
        ["published.zips", "not_a_zip"],
    ),
    "bad_sha256": (
        mutate("published", {"zips": {"fitted_bs": {"sha256": "abc"}}}),
        ["published.zips.fitted_bs.sha256"],
    ),
    "compilation_cache_number": (mutate("compilation_cache", 3), ["compilation_cache"]),
    "compilation_cache_empty_path": (mutate("compilation_cache", ""), ["compilation_cache"]),
    "wandb_project_with_a_space": (
        mutate("logging", {"wandb": {"project": "my project"}}),
        ["logging.wandb.project"],
    ),
    "seeds_per_job_zero": (mutate("seeds_per_job", 0), ["seeds_per_job"]),
    "seeds_per_job_string": (mutate("seeds_per_job", "all"), ["seeds_per_job"]),
    "negative_steps": (mutate("train.steps", -5), ["train.steps"]),
    "warmup_not_below_steps": (mutate("train.warmup_steps", 2000), ["train.warmup_steps"]),
    "duplicate_seeds": (mutate("seeds", [0, 1, 1]), ["seeds"]),
    "unknown_top_level_key": (mutate("gird", []), ["gird"]),
    "unknown_train_key": (mutate("train.learning_rate", 0.1), ["train", "learning_rate"]),
    "lr_read_as_string": (mutate("grid.0.lrs", ["3e-4"]), ["grid[0].lrs[0]", "3.0e-4"]),
    "override_env_not_in_grid": (
        mutate("train_overrides", {"walker-run": {"steps": 100}}),
        ["train_overrides.walker-run"],
    ),
    "heldout_budgets_leave_too_few": (
        mutate("analysis.budget", {"n_heldout": 19}),
        ["analysis.budget.n_heldout"],
    ),
    "proposal_threshold_out_of_range": (
        mutate("analysis.proposal", {"threshold_idx": 20}),
        ["analysis.proposal.threshold_idx"],
    ),
    "figure_threshold_out_of_range": (
        mutate("analysis.figures", {"threshold_idx": 20}),
        ["analysis.figures.threshold_idx"],
    ),
    "figure_threshold_negative": (
        mutate("analysis.figures", {"threshold_idx": -1}),
        ["analysis.figures.threshold_idx"],
    ),
    "figure_variant_unknown": (
        mutate("analysis.figures", {"variants": ["per_env", "pooled"]}),
        ["analysis.figures.variants[1]"],
    ),
    "figure_variants_empty": (
        mutate("analysis.figures", {"variants": []}),
        ["analysis.figures.variants"],
    ),
    "figure_variant_not_fitted": (
        BASE
        | {
            "analysis": BASE["analysis"]
            | {"fits": {"variants": ["per_env"]}, "figures": {"variants": ["averaged"]}}
        },
        ["analysis.figures.variants", "averaged"],
    ),
    "published_source_missing_dir": (
        mutate("published", {"zips": {"fitted_bs": {}}}) | {"published_source": "no/such/dir"},
        ["published_source"],
    ),
}


def _local_source_lacking_a_required_zip(root: Path) -> dict:
    source = root / "source"
    source.mkdir(parents=True, exist_ok=True)
    return mutate("published", {"zips": {"fitted_bs": {}}}) | {"published_source": str(source)}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_config_fails_naming_the_key(tmp_path, case):
    config, needles = BAD_CASES[case]
    _fails_before_any_job(tmp_path, config, needles)


def test_local_source_lacking_a_required_zip_fails(tmp_path):
    config = _local_source_lacking_a_required_zip(tmp_path)
    _fails_before_any_job(tmp_path / "work", config, ["published.zips.fitted_bs"])


def _fails_before_any_job(workdir: Path, config: dict, needles: list[str]) -> None:
    """``snakemake -n`` with ``config`` exits non-zero with the workflow's own error (a ValueError
    naming the key, not a crash elsewhere) while loading the config: no DAG, nothing written."""
    proc = dry_run(workdir, config)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"accepted:\n{output[-2000:]}"
    assert "ValueError in file" in output and "invalid config key" in output, output[-3000:]
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output[-3000:]}"
    assert "Job stats" not in output and "Building DAG" not in output, output[-2000:]
    assert not (workdir / "results").exists()


# --------------------------------------------------------------------------- schema vs engine


def load_schema() -> dict:
    return yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_train_settings_are_the_engines_config_fields_with_its_defaults():
    """The schema's train block is the one the package derives from the loop's and every
    registered agent's settings (keys, types, bounds, defaults, descriptions): regenerate it with
    ``python -m valuescale.config --write-schema`` after changing a setting."""
    from valuescale.agents import AGENTS, config_class
    from valuescale.config import PATH_SETTINGS, loop_fields, train_settings_schema
    from valuescale.settings import public_fields

    block = load_schema()["$defs"]["train_settings"]
    assert block == train_settings_schema()
    settings = [f for f in loop_fields() if f.name not in PATH_SETTINGS]
    for agent in AGENTS:
        settings += [f for f in public_fields(config_class(agent)) if f.name not in PATH_SETTINGS]
    assert set(block["properties"]) == {f.name for f in settings}
    for f in settings:  # with one agent, every default is that agent's
        if len(AGENTS) == 1:
            assert block["properties"][f.name]["default"] == f.default, f.name


def test_a_setting_shared_by_two_agents_with_other_defaults_defaults_to_null(monkeypatch):
    """Two agents declaring one setting with different defaults: the schema's default is null
    (each agent's own); the same bounds are required."""

    import valuescale.agents as agents
    from valuescale.config import train_settings_schema
    from valuescale.settings import setting

    bro = agents.config_class("bro")

    @dataclasses.dataclass(frozen=True)
    class Other:
        critic_width: int = setting(512, low=1)
        """W."""
        batch_size: int = setting(256, low=1)
        """B."""
        lr: float = setting(1e-4, low=0.0, low_open=True)
        """eta."""
        discount: float = setting(0.995, low=0.0, high=1.0)
        """gamma."""
        n_atoms: int = setting(101, low=2)
        """Atoms."""

    classes = {"bro": bro, "other": Other}
    monkeypatch.setattr(agents, "config_class", classes.__getitem__)
    monkeypatch.setattr("valuescale.config.config_class", classes.__getitem__)
    props = train_settings_schema(("bro", "other"))["properties"]
    assert props["discount"]["default"] is None and props["discount"]["type"] == ["number", "null"]
    assert "bro 0.99, other 0.995" in props["discount"]["description"]
    assert (
        props["n_atoms"]["default"] == 101 and props["n_atoms"]["description"] == "(other) Atoms."
    )
    assert props["n_quantiles"]["description"].startswith("(bro) ")
    assert "batch_size" not in props and "lr" not in props  # path settings


def _walk(node: dict, where: str):
    for key, spec in node.get("properties", {}).items():
        yield f"{where}.{key}", spec
        yield from _walk(spec, f"{where}.{key}")
    for name, spec in node.get("$defs", {}).items():
        yield from _walk(spec, f"$defs.{name}")


def test_every_schema_key_has_a_description_and_a_type():
    schema = load_schema()
    defs = schema["$defs"]
    for where, spec in _walk(schema, ""):
        if "$ref" in spec:
            spec = {**defs[spec["$ref"].split("/")[-1]], **spec}
        assert "description" in spec, f"{where} has no description"
        assert "type" in spec or "oneOf" in spec, f"{where} has no type"


def test_every_optional_top_level_and_settings_key_has_a_default():
    schema = load_schema()
    defs = schema["$defs"]
    # per-env analysis entries have no defaults on purpose: an absent key means the paper's value
    skip = {"$defs.env_analysis", "$defs.grid_block"}
    for where, spec in _walk(schema, ""):
        parent = where.rsplit(".", 1)[0]
        if parent in skip or where.startswith("$defs.env_analysis"):
            continue
        if "$ref" in spec:
            spec = {**defs[spec["$ref"].split("/")[-1]], **spec}
        if spec.get("type") == "object" and "properties" not in spec:
            continue
        assert "default" in spec, f"{where} has no default"


@pytest.mark.parametrize(
    "name",
    [
        "config.yaml",
        "batch_size.yaml",
        "published.yaml",
        "paper_humanoidbench.yaml",
        "paper_dmc.yaml",
    ],
)
def test_shipped_configs_are_valid(tmp_path, name):
    if name == "paper_humanoidbench.yaml" and importlib.util.find_spec("humanoid_bench") is None:
        # the workflow refuses an h1 env it cannot import (test_humanoidbench.py)
        if (ROOT.parent / "shared" / "vendor" / "humanoid-bench-217b38f.tar.gz").is_file():
            pytest.fail("../shared/vendor holds HumanoidBench: run the README's test command")
        pytest.skip("humanoid_bench is not installed and ../shared/vendor does not hold it")
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    extra = []
    if name == "published.yaml" and SHARED_PUBLISHED.is_dir():
        extra = ["--config", f"published_source={SHARED_PUBLISHED}"]
    proc = dry_run(tmp_path, config, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Job stats" in proc.stdout + proc.stderr


def test_runtime_estimate_follows_each_agents_updates_and_flops():
    """The scheduler's runtime estimate: the job's planned updates (SimbaV2 counts utd per agent
    step of action_repeat 2 simulator steps) times the agent's own FLOPs per update."""
    from valuescale import study
    from valuescale.agents.bro.config import BROConfig
    from valuescale.agents.simbav2.config import SimbaV2Config
    from valuescale.flops import update_flops

    cfg = study.load_config()
    cfg["train"].update(steps=1_002_000, warmup_steps=2_000, action_repeat=None)
    cfg["resources"]["train"].update(runtime_base_min=5, runtime_safety=1.0, runtime_gflops=100)
    obs_act = study.NOMINAL_OBS_ACT

    def minutes(agent, first=0, last=0):
        # the path forms, as Snakemake's wildcards give them
        job = study.TrainJob("cheetah-run", agent, "2", "512", "256", "3e-4", str(first), str(last))
        return study.train_runtime_minutes(cfg, job)

    # config/config.yaml's actor_width 64 applies to both agents, its n_quantiles 10 to BRO
    bro = update_flops(
        *obs_act, BROConfig(critic_width=512, batch_size=256, actor_width=64, n_quantiles=10)
    )
    bro_updates = 2 * 1_000_000  # utd 2 per env step
    assert minutes("bro") == 5 + math.ceil(bro * bro_updates / 100e9 / 60)
    assert minutes("bro", 0, 4) == 5 + math.ceil(5 * bro * bro_updates / 100e9 / 60)
    simba = update_flops(
        *obs_act, SimbaV2Config(critic_width=512, batch_size=256, critic_heads=1, actor_width=64)
    )
    simba_updates = 2 * 1_000_000 // 2  # utd 2 per agent step of 2 simulator steps
    assert minutes("simbav2") == 5 + math.ceil(simba * simba_updates / 100e9 / 60)
    assert simba > 2 * bro  # one 17 W^2 head against BRO's two 4 W^2 ones (and the passes)
