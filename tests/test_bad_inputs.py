"""Bad input never costs work: each case below is what a user sees, one line and an exit code.

Every case runs the real command line (typer's CliRunner, in process) against a shared directory
that holds a finished SFT run and an RL run with checkpoints, and then checks that the directory is
byte for byte as it was: a rejected command changes nothing. The output compared is everything the
command printed except progress bars (lines redrawn with a carriage return, and rich's bar lines),
which appear when an error is found after a model was loaded.
"""

import errno
import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mirrorl.cli import app
from mirrorl.train import resume
from mirrorl.train.checkpoint import find_latest

TRAIN = Path(__file__).parent / "train"  # toy_rewards.py
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64"]
SMALL = ["data.num_sft=16", "data.num_rl=8", "data.num_eval=4", "run.tensorboard=false", "sft.steps=2",
         "sft.batch_size=8", "rl.iterations=3", "rl.problems_per_iteration=2", "algo.num_samples=2",
         "rollout.max_new_tokens=16", "eval.num_samples=1", "rl.init_from={tmp}/policy", "run.num_threads=1"]
RL_RUN = ["rl.init_from={tmp}/policy", "run.output_dir={tmp}/done", "rl.reward=toy_rewards:varied", "rl.save_every=1"]

FILES = {
    "tab.yaml": "algo:\n\ttau: 0.1\n",
    "bracket.yaml": "algo:\n  tau: [0.1\n",
    "list.yaml": "- 1\n- 2\n",
    "typo.yaml": "rll:\n  iterations: 3\n",
    "latin1.yaml": b"algo:\n  loss: \xe9\n",
    "no_prompt.jsonl": '{"prompt": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n',
    "no_answer.jsonl": '{"prompt": "1+1?", "answer": "2"}\n\n{"prompt": "2+2?", "answer": " "}\n',
    "broken.jsonl": '{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": "4"\n',
    "list_row.jsonl": '["2+2?", "4"]\n',
    "bad_difficulty.jsonl": '{"prompt": "1+1?", "answer": "2", "difficulty": "hard"}\n',
    "no_difficulty.jsonl": '{"prompt": "1+1?", "answer": "2"}\n',
    "empty.jsonl": "",
    "problems.csv": "prompt,answer\n1+1?,2\n",
    "model_empty/.keep": "",
    "model_corrupt/config.json": '{"model_type": ',
    "solution.py": "print(int(input()) * 2)\n",
    "tests.json": '[{"input": "2\\n", "output": "4\\n"}]',
    "killed_early/rl_metrics.jsonl": '{"step": 0, "reward": 0.5}\n',
    "pairs_no_rejected.jsonl": '{"prompt": "1+1?", "chosen": "2", "rejected": "3"}\n'
                               '{"prompt": "2+2?", "chosen": "4"}\n',
}

CASES = {
    # recipes and overrides
    "yaml_tab": (["rl", "-c", "{tmp}/tab.yaml"], 2,
                 "config file {tmp}/tab.yaml line 2: malformed YAML (found character '\\t' that cannot start any "
                 "token)"),
    "yaml_unclosed_bracket": (["rl", "-c", "{tmp}/bracket.yaml"], 2,
                              "config file {tmp}/bracket.yaml line 3: malformed YAML (expected ',' or ']', but got "
                              "'<stream end>')"),
    "yaml_not_a_mapping": (["sft", "-c", "{tmp}/list.yaml"], 2,
                           "config file {tmp}/list.yaml: expected a mapping of sections, got list"),
    "yaml_not_utf8": (["sft", "-c", "{tmp}/latin1.yaml"], 2, "config file {tmp}/latin1.yaml: not UTF-8 text (byte 14)"),
    "recipe_missing": (["rl", "-c", "{tmp}/nope.yaml"], 2, "config file {tmp}/nope.yaml does not exist"),
    "recipe_is_a_directory": (["rl", "-c", "{tmp}"], 2, "config file {tmp} is a directory, not a YAML file"),
    "unknown_top_level_key_in_yaml": (["rl", "-c", "{tmp}/typo.yaml"], 2,
                                      "{tmp}/typo.yaml: unknown config key 'rll' (did you mean 'rl'?)"),
    "unknown_top_level_key": (["rl", "trainer.lr=1"], 2, "unknown config key 'trainer'"),
    "unknown_nested_key": (["rl", "algo.taux=1"], 2, "unknown config key 'algo.taux' (did you mean 'algo.tau'?)"),
    "wrong_type": (["rl", "rl.iterations=ten"], 2,
                   "config rl.iterations='ten': Input should be a valid integer, unable to parse string as an integer"),
    "negative_lr": (["rl", "rl.lr=-0.1"], 2, "config rl.lr=-0.1: Input should be greater than 0"),
    "negative_temperature": (["rl", "rollout.temperature=-1"], 2,
                             "config rollout.temperature=-1: Input should be greater than or equal to 0"),
    "top_p_above_one": (["rl", "rollout.top_p=1.5"], 2,
                        "config rollout.top_p=1.5: Input should be less than or equal to 1"),
    "override_without_equals": (["rl", "rl.iterations"], 2,
                                "config override 'rl.iterations': expected key=value, e.g. algo.tau=0.05"),
    "value_for_a_section": (["rl", "algo=3"], 2,
                            "config algo=3: 'algo' is a section, not a value; set its keys, e.g. algo.<key>=..."),
    "heads_do_not_divide": (["sft", "model.num_heads=3"], 2,
                            "config model: model.num_heads=3 must divide model.hidden_size=32"),
    # data
    "data_file_missing": (["sft", "data.train_path={tmp}/nope.jsonl"], 2, "data file {tmp}/nope.jsonl does not exist"),
    "row_without_prompt": (["rl", "data.train_path={tmp}/no_prompt.jsonl"], 2,
                           "{tmp}/no_prompt.jsonl:2: row has no prompt (field 'prompt')"),
    "row_without_answer": (["rl", "data.train_path={tmp}/no_answer.jsonl"], 2,
                           "{tmp}/no_answer.jsonl:3: row has no answer (field 'answer') and no tests "
                           "(field 'tests' or meta.tests)"),
    "malformed_jsonl_line": (["rl", "data.train_path={tmp}/broken.jsonl"], 2,
                             "{tmp}/broken.jsonl:2: not valid JSON (Expecting ',' delimiter)"),
    "row_not_an_object": (["rl", "data.train_path={tmp}/list_row.jsonl"], 2,
                          "{tmp}/list_row.jsonl:1: expected a JSON object, got list"),
    "difficulty_not_a_number": (["rl", "data.train_path={tmp}/bad_difficulty.jsonl"], 2,
                                "{tmp}/bad_difficulty.jsonl:1: difficulty must be a number, got 'hard'"),
    "empty_data_file": (["rl", "data.train_path={tmp}/empty.jsonl"], 2,
                        "data file {tmp}/empty.jsonl holds no problems"),
    "unknown_data_format": (["rl", "data.train_path={tmp}/problems.csv"], 2,
                            "{tmp}/problems.csv: unsupported data format (use .jsonl, .parquet or a saved datasets "
                            "dir)"),
    "sft_rows_without_solution": (["sft", "data.train_path={tmp}/no_difficulty.jsonl"], 2,
                                  "no SFT data: the rows need a 'solution' field with the response"),
    "curriculum_without_difficulty": (["rl", "data.train_path={tmp}/no_difficulty.jsonl", "sampler.name=curriculum",
                                       "rl.init_from={tmp}/policy"], 2,
                                      "sampler.name=curriculum needs a difficulty on every problem; "
                                      "'no_difficulty.jsonl:1' has none"),
    # models
    "model_dir_missing": (["sft", "model.path={tmp}/no_model"], 2, "model directory {tmp}/no_model does not exist"),
    "init_from_missing": (["rl", "rl.init_from=./no/such/model"], 2, "model directory ./no/such/model does not exist"),
    "model_dir_without_config": (["eval", "eval.checkpoint={tmp}/model_empty"], 2,
                                 "model path '{tmp}/model_empty' has no config.json: expected a Hugging Face model "
                                 "directory"),
    "model_config_corrupt": (["eval", "eval.checkpoint={tmp}/model_corrupt"], 2,
                             "cannot load model '{tmp}/model_corrupt': It looks like the config file at "
                             "'{tmp}/model_corrupt/config.json' is not a valid JSON file."),
    "model_weights_do_not_fit": (["eval", "eval.checkpoint={tmp}/model_mismatch"], 2,
                                 "cannot load model '{tmp}/model_mismatch': its weights do not fit the shapes in its "
                                 "config.json"),
    "rl_without_policy": (["rl", "rl.init_from=null"], 2,
                          "rl needs a starting policy: set rl.init_from or model.path, or run `mirrorl sft` first"),
    "eval_without_model": (["eval"], 2, "eval needs a model: set eval.checkpoint=DIR (or model.path=DIR)"),
    # rewards
    "unknown_reward": (["rl", "rl.reward=chain_summ"], 2,
                       "rl.reward='chain_summ': not a registered reward (chain_sum, code, code_unprotected, math, "
                       "cot_rm, value_rm) nor 'module:function'"),
    "reward_module_not_importable": (["rl", "rl.reward=no_such_module:score"], 2,
                                     "rl.reward='no_such_module:score': cannot import it (No module named "
                                     "'no_such_module')"),
    "reward_function_missing": (["rl", "rl.reward=toy_rewards:nope"], 2,
                                "rl.reward='toy_rewards:nope': cannot import it (module 'toy_rewards' has no attribute "
                                "'nope')"),
    "reward_not_callable": (["rl", "rl.reward=toy_rewards:NOT_CALLABLE"], 2,
                            "rl.reward='toy_rewards:NOT_CALLABLE': NOT_CALLABLE is not callable"),
    # run directories
    "finished_run_without_overwrite": (["sft", "run.output_dir={tmp}/done"], 2,
                                       "{tmp}/done already holds a finished sft run ({tmp}/done/sft/final): pass "
                                       "--resume to continue it or --overwrite to start afresh"),
    "unfinished_run_without_resume": (["rl", "run.output_dir={tmp}/unfinished"], 2,
                                      "{tmp}/unfinished already holds an unfinished rl run (checkpoint "
                                      "{tmp}/unfinished/checkpoints/rl/step-000003): pass --resume to continue it or "
                                      "--overwrite to start afresh"),
    "metrics_of_a_run_without_checkpoint": (["rl", "run.output_dir={tmp}/killed_early"], 2,
                                            "{tmp}/killed_early already holds the metrics of an earlier rl run that "
                                            "left no checkpoint ({tmp}/killed_early/rl_metrics.jsonl): pass "
                                            "--overwrite to start afresh"),
    "demo_on_a_finished_run": (["demo", "run.output_dir={tmp}/done"], 2,
                               "{tmp}/done already holds a finished sft run ({tmp}/done/sft/final): pass "
                               "--resume to continue it or --overwrite to start afresh"),
    "resume_without_checkpoint": (["rl", "--resume", "run.output_dir={tmp}/fresh"], 2,
                                  "nothing to resume: no valid rl checkpoint in {tmp}/fresh/checkpoints/rl; run "
                                  "without --resume to start afresh"),
    "resume_and_overwrite": (["rl", "--resume", "--overwrite"], 2,
                             "--resume and --overwrite exclude each other: continue the run or replace it"),
    "resume_with_other_data": (["rl", *RL_RUN, "--resume", "data.num_rl=9"], 2,
                               "cannot resume from {tmp}/done/checkpoints/rl/step-000003: it was written with "
                               "data.num_rl=8, now 9; resume with the same value or start afresh with --overwrite"),
    "resume_past_the_end": (["rl", *RL_RUN, "--resume", "rl.iterations=2"], 2,
                            "cannot resume from {tmp}/done/checkpoints/rl/step-000003: it is at step 3, past "
                            "rl.iterations=2"),
    # long2short
    "dpo_pairs_missing": (["dpo", "dpo.pairs_path={tmp}/nope.jsonl"], 2,
                          "DPO pairs file {tmp}/nope.jsonl does not exist"),
    "dpo_pair_without_rejected": (["dpo", "dpo.pairs_path={tmp}/pairs_no_rejected.jsonl"], 2,
                                  "{tmp}/pairs_no_rejected.jsonl:2: a DPO pair needs text fields prompt, chosen and "
                                  "rejected (rejected missing)"),
    "shortest_rs_model_missing": (["shortest-rs", "rejection.model={tmp}/nope"], 2,
                                  "model directory {tmp}/nope does not exist"),
    "merge_weights_not_numbers": (["merge", "{tmp}/policy", "{tmp}/policy", "--weights", "half,half", "--out",
                                   "{tmp}/merged"], 2,
                                  "--weights 'half,half': expected numbers separated by commas, e.g. 0.3,0.7"),
    "long2short_no_run": (["long2short", "{tmp}/nope"], 2,
                          "run directory {tmp}/nope does not exist (run `mirrorl demo` first, or give "
                          "long2short.long_model and a directory to write to)"),
    "long2short_other_seed": (["long2short", "{tmp}/done", "run.seed=1"], 2,
                              "long2short: {tmp}/done was trained with run.seed=0, this comparison has run.seed=1: its "
                              "held-out problems would not be held out from that run; pass run.seed=0"),
    "long2short_file_data_without_short_model": (
        ["long2short", "{tmp}/done", "data.train_path={tmp}/no_difficulty.jsonl"], 2,
        "long2short: give long2short.short_model: without it the short model is trained on the built-in task's short "
        "traces, which do not fit data.train_path"),
    # sandbox
    "sandbox_program_missing": (["sandbox", "run", "{tmp}/nope.py", "{tmp}/tests.json"], 2,
                                "cannot read {tmp}/nope.py: No such file or directory"),
    "sandbox_negative_limit": (["sandbox", "run", "{tmp}/solution.py", "{tmp}/tests.json", "--wall-seconds", "-1"], 2,
                               "sandbox limit wall_seconds=-1.0: Input should be greater than 0"),
    "sandbox_unknown_backend": (["sandbox", "run", "{tmp}/solution.py", "{tmp}/tests.json", "--backend", "docker"], 2,
                                "--backend 'docker': expected bubblewrap or none ('auto' means bubblewrap)"),
}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _command_line(args: list[str], tmp: Path) -> list[str]:
    """Training commands get the small model (unless the case names one) and data and a scratch run directory,
    before the case's own arguments."""
    args = [a.format(tmp=tmp) for a in args]
    if args[0] in ("sft", "rl", "demo", "eval", "dpo", "shortest-rs"):
        tiny = [] if any(a.startswith("model.path=") for a in args) else TINY
        args = [args[0], *tiny, *[a.format(tmp=tmp) for a in SMALL], f"run.output_dir={tmp}/scratch", *args[1:]]
    return args


def _shown(output: str) -> list[str]:
    """The lines a user reads: progress bars left out (see the module docstring)."""
    return [line for line in output.split("\n") if line and "\r" not in line and "━" not in line]


def _invoke(args: list[str], tmp: Path):
    return CliRunner().invoke(app, _command_line(args, tmp))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_policy_dir) -> Path:
    """Input files, a tiny policy, a finished SFT run and an RL run with checkpoints (in `done`)."""
    tmp = tmp_path_factory.mktemp("bad")
    for name, content in FILES.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    shutil.copytree(tiny_policy_dir, tmp / "policy")
    shutil.copytree(tiny_policy_dir, tmp / "model_mismatch")
    config = json.loads((tmp / "model_mismatch" / "config.json").read_text())
    mismatch = {**config, "hidden_size": 64, "num_attention_heads": 4}  # the weights are for hidden size 32
    (tmp / "model_mismatch" / "config.json").write_text(json.dumps(mismatch))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(TRAIN))
        for command in (["sft", "run.output_dir={tmp}/done"], ["rl", *RL_RUN]):
            result = _invoke(command, tmp)
            assert result.exit_code == 0, result.output
    shutil.copytree(tmp / "done" / "checkpoints", tmp / "unfinished" / "checkpoints")
    return tmp


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_what_and_where(workdir, monkeypatch, case):
    args, code, message = CASES[case]
    monkeypatch.syspath_prepend(str(TRAIN))
    before = _tree_digest(workdir / "done")
    result = _invoke(args, workdir)
    assert (result.exit_code, _shown(result.output)) == (code, [f"error: {message.format(tmp=workdir)}"])
    assert _tree_digest(workdir / "done") == before


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint(workdir, tmp_path, monkeypatch):
    writes = []

    def fill_the_disk(directory, trainer, *args, **kwargs):
        writes.append(trainer["iteration"])
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(directory, trainer, *args, **kwargs)

    write = resume.write_training_state
    monkeypatch.setattr(resume, "write_training_state", fill_the_disk)
    monkeypatch.syspath_prepend(str(TRAIN))
    args = ["rl", *RL_RUN, f"run.output_dir={tmp_path}"]
    result = _invoke(args, workdir)
    root = tmp_path / "checkpoints" / "rl"
    assert result.exit_code == 1
    assert _shown(result.output)[-1] == (f"error: checkpoint step 2 was not saved in {root} (OSError: [Errno 28] No "
                                         "space left on device); the previous checkpoint (step-000001) and 'latest' "
                                         "are untouched")
    assert find_latest(root).step == 1 and sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]
    monkeypatch.setattr(resume, "write_training_state", write)
    result = _invoke([*args, "--resume"], workdir)  # once there is room again, the run goes on
    assert result.exit_code == 0, result.output
    assert find_latest(root).step == 3


def test_a_reward_that_raises_on_every_sample_stops_with_a_checkpoint(workdir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TRAIN))
    args = ["rl", *RL_RUN, f"run.output_dir={tmp_path}", "rl.reward=toy_rewards:always_raises"]
    result = _invoke(args, workdir)
    found = find_latest(tmp_path / "checkpoints" / "rl")
    lines = _shown(result.output)
    command = shlex.join(["mirrorl", *_command_line(args, workdir), "--resume"])
    assert result.exit_code == 1
    assert lines[-1] == (f"error: rl iteration {found.step}: the reward function scored none of 4 samples (4 raised, "
                         "first: ZeroDivisionError: division by zero in the scorer); checkpoint saved in "
                         f"{found.path}; "
                         f"continue with: {command}")
