"""Config tree: YAML + dotted overrides, and the one-line errors users see."""

from pathlib import Path

import pytest

from mirrorl.config import dump_config, load_config, parse_override


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert cfg.model.path is None and cfg.data.train_path is None
    assert cfg.algo.loss == "mirror_descent"


def test_yaml_then_overrides_win(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algo:\n  tau: 0.2\n  num_samples: 4\nrl:\n  iterations: 3\n")
    cfg = load_config(recipe, ["algo.tau=0.05", "algo.length_penalty.weight=0.5", "sampler.name=prioritized",
                                 "sampler.ema=null"])
    assert cfg.algo.tau == 0.05 and cfg.algo.num_samples == 4 and cfg.rl.iterations == 3
    assert cfg.algo.length_penalty.weight == 0.5 and cfg.sampler.ema is None


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=runs/x") == ("a.b", "runs/x")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.taux=1"], "unknown config key 'algo.taux'"),
        (["algo.tau=abc"], "config algo.tau='abc': Input should be a valid number"),
        (["algo.tau=-1"], "config algo.tau=-1: Input should be greater than 0"),
        (["algo.loss=ppo"], "config algo.loss='ppo': Input should be 'mirror_descent', 'rest' or 'group_pg'"),
        (["algo.num_samples=1"], "config algo.num_samples=1: Input should be greater than or equal to 2"),
        (["tau"], "config override 'tau': expected key=value, e.g. algo.tau=0.05"),
        (["algo.tau.x=1"], "config algo.tau={'x': 1}: Input should be a valid number"),
        (["model.num_heads=3"], "config model: model.num_heads=3 must divide model.hidden_size=128"),
        (["algo.taux=1"], "unknown config key 'algo.taux' (did you mean 'algo.tau'?)"),
        (["rewards.math.nope=1"], "unknown config key 'rewards.math.nope'"),
        (["algo=3"], "config algo=3: 'algo' is a section, not a value; set its keys, e.g. algo.<key>=..."),
        (["checkpoint.keep_last=0"], "config checkpoint.keep_last=0: Input should be greater than or equal to 1"),
        (["sft.save_every=-1"], "config sft.save_every=-1: Input should be greater than or equal to 0"),
        (["algo.loss=rest", "algo.tau=0.05"],
         "config algo.tau does not apply to algo.loss=rest (it is a setting of algo.loss=mirror_descent)"),
        (["algo.clip_eps=0.3"],
         "config algo.clip_eps does not apply to algo.loss=mirror_descent (it is a setting of algo.loss=group_pg)"),
        (["sampler.ema=0.5"],
         "config sampler.ema does not apply to sampler.name=uniform (it is a setting of sampler.name=prioritized)"),
        (["sampler.name=curriculum", "sampler.swich_iteration=3"],
         "unknown config key 'sampler.swich_iteration' (did you mean 'sampler.switch_iteration'?)"),
        (["sampler.name=curriculum", "sampler.switch_iteration=-1"],
         "config sampler.switch_iteration=-1: Input should be greater than or equal to 0"),
        (["rl.train_tokens=newest"],
         "config rl: rl.train_tokens applies to partial rollouts only: set rl.segment_budget > 0"),
        (["model.path=some/model", "model.num_layers=2"],
         "config model: model.num_layers applies to the built-in tiny model: leave model.path empty"),
        (["distributed.learners=4"], "config: distributed.learners applies to run.backend=ray"),
        (["run.ray_address=auto"], "config: run.ray_address applies to run.backend=ray"),
        (["run.backend=ray", "distributed.placement=colocated", "distributed.learners=3"],
         "config distributed: placement=colocated runs one engine per learner rank: set rollout_workers (2) equal "
         "to learners (3)"),
        (["run.backend=slurm"], "config run.backend='slurm': Input should be 'local' or 'ray'"),
        (["run.backend=ray", "distributed.placement=colocated", "distributed.max_staleness=1"],
         "config distributed: max_staleness=1 overlaps rollout and training, which colocated actors cannot: use "
         "placement=separate"),
        (["run.backend=ray", "distributed.placement=colocated", "distributed.strategy=fsdp2"],
         "config distributed: strategy=fsdp2 shards the learners' weights, which colocated engines cannot generate "
         "with: use placement=separate"),
        (["run.backend=ray", "distributed.placement=colocated", "distributed.weight_sync=broadcast"],
         "config distributed: weight_sync=broadcast moves weights to separate rollout workers; colocated ones "
         "already hold them: use placement=separate or weight_sync=object_store"),
        (["distributed.strategy=fsdp2"], "config: distributed.strategy applies to run.backend=ray"),
    ],
)
def test_bad_values_fail_with_key_value_and_expectation(overrides, message):
    cfg_error = pytest.raises(ValueError)
    with cfg_error as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_override_below_a_value_fails(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algo:\n  tau: 0.2\n")
    with pytest.raises(ValueError, match="config override algo.tau.x: 'tau' is a value, not a section"):
        load_config(recipe, ["algo.tau.x=1"])


def test_bad_files(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("algo:\n  tau: [0.1\n")
    with pytest.raises(ValueError, match=r"broken.yaml line 3: malformed YAML \(expected ',' or '\]', but got"):
        load_config(broken)
    with pytest.raises(ValueError, match="is a directory, not a YAML file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"run:\n  output_dir: caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin.yaml: not UTF-8 text \(byte 22\)"):
        load_config(latin)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping of sections, got list"):
        load_config(listing)


def test_variants_carry_only_their_own_settings():
    assert load_config(None, ["algo.tau=0.05"]).algo.loss_params() == {"tau": 0.05, "length_normalize": False}
    group_pg = load_config(None, ["algo.loss=group_pg", "algo.clip_eps=0.3", "algo.num_samples=4"]).algo
    assert group_pg.loss_params() == {"clip_eps": 0.3, "scale_by_std": False} and group_pg.num_samples == 4
    assert load_config(None, ["algo.loss=rest"]).algo.loss_params() == {}
    prioritized = load_config(None, ["sampler.name=prioritized", "sampler.ema=0.5"]).sampler
    assert (prioritized.name, prioritized.ema) == ("prioritized", 0.5)
    assert load_config(None, ["rl.segment_budget=8", "rl.train_tokens=newest"]).rl.train_tokens == "newest"


def test_a_dumped_config_loads_back_unchanged(tmp_path: Path):
    cfg = load_config(None, ["algo.loss=group_pg", "sampler.name=curriculum", "rl.segment_budget=8", "rl.is_cap=2"])
    dumped = tmp_path / "config.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped) == cfg
    assert load_config(dumped.parent / "config.yaml", ["rl.segment_budget=16"]).rl.is_cap == 2
