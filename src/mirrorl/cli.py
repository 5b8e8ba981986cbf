"""The `mirrorl` command line: one subcommand per recipe, YAML config plus dotted overrides.

    mirrorl demo                                  # the embedded default, end to end on CPU
    mirrorl sft -c configs/demo.yaml sft.steps=100
    mirrorl rl  -c configs/demo.yaml algo.tau=0.05 rl.iterations=20
    mirrorl eval -c configs/demo.yaml eval.checkpoint=runs/demo/rl/final
    mirrorl view runs/demo                        # runs/demo/report.html: curves and the samples themselves
    mirrorl long2short runs/demo -c configs/long2short.yaml   # the report's Figure 7 after the demo
    mirrorl merge LONG SHORT --weights 0.5,0.5 --out merged
    mirrorl shortest-rs rejection.model=runs/demo/rl/final      # SFT rows for `mirrorl sft data.train_path=...`
    mirrorl dpo dpo.init_from=runs/demo/rl/final
    mirrorl rl  -c configs/demo.yaml --resume     # continue from the newest checkpoint
    mirrorl sandbox run solution.py tests.jsonl   # one program against tests, verdict as JSON
    mirrorl gen-tests problems.jsonl kept.jsonl --generator gen.py
    mirrorl train-rm rm.train_path=pairs.jsonl    # value-head reward model

Bad input (config, data, model path) ends with one line saying what and where, exit code 2; a
failed save or other I/O error, exit code 1; SIGINT/SIGTERM during training writes a checkpoint
and ends with one line saying where it is and how to resume, exit code 128 + the signal number.
A run directory that already holds a phase is only continued (--resume) or replaced (--overwrite)
when asked.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mirrorl.config import Config, dump_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mirrorl: the Kimi k1.5 RL recipe. Every command takes -c RECIPE.yaml and key=value overrides.")

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML recipe (see configs/).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. algo.tau=0.05 rl.iterations=20.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the run directory's newest valid checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what the run directory holds of this phase.")]


def _resume_command(name: str, kwargs: dict[str, Any]) -> str:
    """The command line that continues an interrupted `name` run."""
    parts = ["mirrorl", name]
    if kwargs.get("config") is not None:
        parts += ["-c", str(kwargs["config"])]
    return shlex.join([*parts, *(kwargs.get("overrides") or []), "--resume"])


SANDBOX_BACKEND_HELP = ("Sandbox: bubblewrap (refuses to run programs without it) or none (unprotected, on purpose); "
                        "'auto' means bubblewrap.")


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every way a command can fail, as one line on stderr and a non-zero exit code.

    2: bad user input (ValueError); 1: a checkpoint that could not be saved, an I/O failure, a run
    stopped because its reward scored nothing, or a distributed run whose learner rank died or hung;
    128 + N: stopped by signal N after a checkpoint.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValueError as err:
            raise _fail(str(err), 2) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; the newest checkpoint, if any, is intact", 130) from None
        except (RuntimeError, OSError) as err:
            from mirrorl.train.checkpoint import CheckpointError  # here: `mirrorl config` needs no torch
            from mirrorl.train.resume import TrainingStopped

            if isinstance(err, TrainingStopped):
                resume = _resume_command(command.__name__, kwargs)
                raise _fail(f"{err}; continue with: {resume}", err.exit_code) from None
            if isinstance(err, (CheckpointError, OSError)):
                raise _fail(str(err), 1) from None
            from mirrorl.distributed import BackendError

            if isinstance(err, BackendError):
                resume = _resume_command(command.__name__, kwargs)
                raise _fail(f"{err}; checkpoints written so far are intact, continue with: {resume}", 1) from None
            raise

    return wrapper


def _config(path: Path | None, overrides: list[str] | None) -> Config:
    return load_config(path, overrides or [])


def _start(resume: bool, overwrite: bool) -> str:
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
    return "resume" if resume else "overwrite" if overwrite else "new"


@app.command()
@_user_errors
def demo(config: ConfigOption = None, overrides: Overrides = None, resume: Resume = False,
         overwrite: Overwrite = False) -> None:
    """Train the tiny model from scratch with long-CoT SFT, evaluate, run RL, evaluate (CPU, no download)."""
    from mirrorl.recipes import run_demo

    run_demo(_config(config, overrides), _start(resume, overwrite))


@app.command()
@_user_errors
def sft(config: ConfigOption = None, overrides: Overrides = None, resume: Resume = False,
        overwrite: Overwrite = False) -> None:
    """Long-CoT supervised fine-tuning (k1.5 sec. 2.2)."""
    from mirrorl.recipes import run_sft

    run_sft(_config(config, overrides), _start(resume, overwrite))


@app.command()
@_user_errors
def rl(config: ConfigOption = None, overrides: Overrides = None, resume: Resume = False,
       overwrite: Overwrite = False) -> None:
    """RL by online policy mirror descent (k1.5 sec. 2.3)."""
    from mirrorl.recipes import run_rl

    run_rl(_config(config, overrides), _start(resume, overwrite))


@app.command("eval")
@_user_errors
def eval_command(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Held-out pass@1 (averaged over samples), pass@k, maj@k, greedy accuracy and lengths of eval.checkpoint."""
    from mirrorl.recipes import run_eval

    cfg = _config(config, overrides)
    checkpoint = cfg.eval.checkpoint or cfg.model.path
    if checkpoint is None:
        raise ValueError("eval needs a model: set eval.checkpoint=DIR (or model.path=DIR)")
    result = run_eval(cfg, checkpoint, Path(checkpoint).name)
    sys.stdout.write(json.dumps(result.as_dict()) + "\n")


@app.command()
@_user_errors
def plot(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Redraw curves.png of a run from its metrics files."""
    from mirrorl.plots import plot_run

    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    typer.echo(plot_run(run_dir, summary))


@app.command()
@_user_errors
def view(run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
         out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write (default RUN_DIR/report.html).")]
         = None) -> None:
    """Write one self-contained HTML report of a run: curves, samples, groups, evaluations (opens from disk)."""
    from mirrorl.view import write_report

    typer.echo(write_report(run_dir, out))


@app.command()
@_user_errors
def dpo(config: ConfigOption = None, overrides: Overrides = None, resume: Resume = False,
        overwrite: Overwrite = False) -> None:
    """DPO toward short responses (k1.5 sec. 2.4): pairs from the policy's own samples, or dpo.pairs_path."""
    from mirrorl.recipes import run_dpo

    run_dpo(_config(config, overrides), _start(resume, overwrite))


@app.command("shortest-rs")
@_user_errors
def shortest_rs(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Shortest rejection sampling (k1.5 sec. 2.4): each training problem's shortest correct response as SFT rows."""
    from mirrorl.recipes import run_shortest_rs

    typer.echo(run_shortest_rs(_config(config, overrides)))


def _numbers(text: str, option: str) -> list[float]:
    """'0.3,0.7' -> [0.3, 0.7]; ValueError naming the option."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected numbers separated by commas, e.g. 0.3,0.7") from None


@app.command()
@_user_errors
def merge(
    models: Annotated[list[Path], typer.Argument(help="Model directories (one architecture, one tokenizer).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the merged model goes.")],
    weights: Annotated[str | None, typer.Option(help="Weights summing to 1, e.g. 0.7,0.3; default equal.")] = None,
    sweep: Annotated[str | None, typer.Option(help="Two models: merge once per weight of the first, e.g. "
                                              "0.25,0.5,0.75, into OUT/alpha_<weight>/.")] = None,
    shard_mb: Annotated[float, typer.Option(help="Largest output shard, MB.")] = 500.0,
    overwrite: Overwrite = False,
) -> None:
    """Weighted average of checkpoints, streamed tensor by tensor (k1.5 sec. 2.4, model merging)."""
    from mirrorl.long2short.merge import merge_checkpoints, merge_sweep

    if sweep is not None:
        if weights is not None:
            raise ValueError("--weights and --sweep exclude each other")
        results = merge_sweep(models, _numbers(sweep, "--sweep"), out, shard_mb=shard_mb, overwrite=overwrite)
    else:
        chosen = _numbers(weights, "--weights") if weights else [1 / len(models)] * len(models)
        results = [merge_checkpoints(models, chosen, out, shard_mb=shard_mb, overwrite=overwrite)]
    for result in results:
        typer.echo(f"{result.out}: {result.num_tensors} tensors, {result.num_parameters} parameters, "
                   f"{result.seconds:.1f} s")


@app.command()
@_user_errors
def long2short(run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/demo after `mirrorl demo`.")],
               config: ConfigOption = None, overrides: Overrides = None, resume: Resume = False,
               overwrite: Overwrite = False) -> None:
    """Every long2short method from one long model, one evaluation: the k1.5 report's Figure 7 as a table and plot."""
    from mirrorl.long2short.compare import run_long2short

    run_long2short(_config(config, overrides), run_dir, _start(resume, overwrite))


sandbox_app = typer.Typer(no_args_is_help=True, help="The code sandbox of the code reward.")
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("run")
@_user_errors
def sandbox_run(
    program: Annotated[Path, typer.Argument(help="Program file (.py, .cpp).")],
    tests: Annotated[Path, typer.Argument(help='JSON list or JSON lines of {"input": ..., "output": ...}.')],
    language: Annotated[str | None, typer.Option(help="python or cpp; default from the suffix.")] = None,
    wall_seconds: Annotated[float | None, typer.Option(help="Wall-clock deadline per test.")] = None,
    cpu_seconds: Annotated[int | None, typer.Option(help="CPU-time limit per test.")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Address-space limit per process, MiB.")] = None,
    float_tolerance: Annotated[float | None, typer.Option(help="Accept numbers within this abs/rel error.")] = None,
    backend: Annotated[str, typer.Option(help=SANDBOX_BACKEND_HELP)] = "bubblewrap",
) -> None:
    """Run a program against test cases in the sandbox and print the verdict as JSON."""
    from pydantic import ValidationError

    from mirrorl.rewards.sandbox import Limits, run_cli

    if backend not in ("auto", "bubblewrap", "none"):
        raise ValueError(f"--backend {backend!r}: expected bubblewrap or none ('auto' means bubblewrap)")
    given = {"wall_seconds": wall_seconds, "cpu_seconds": cpu_seconds,
             "memory_bytes": None if memory_mb is None else memory_mb << 20}
    try:
        limits = Limits(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as err:
        problem = err.errors()[0]
        raise ValueError(f"sandbox limit {problem['loc'][0]}={problem['input']!r}: {problem['msg']}") from None
    result = run_cli(program, tests, language, limits, float_tolerance, backend)  # type: ignore[arg-type]
    sys.stdout.write(json.dumps(result) + "\n")


@app.command("train-rm")
@_user_errors
def train_rm(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Train a value-head reward model (k1.5 sec. 2.3.5) on rm.train_path; prints held-out accuracy as JSON."""
    from mirrorl.config import dump_config
    from mirrorl.models import pick_device, pick_dtype
    from mirrorl.recipes import prepare
    from mirrorl.train.metrics import MetricsLogger
    from mirrorl.train.reward_model import load_rm_data, train_reward_model

    cfg = _config(config, overrides)
    train_rows, eval_rows = load_rm_data(cfg.rm, cfg.run.seed)  # bad data fails before the run directory changes
    out = prepare(cfg)
    device = pick_device(cfg.run.device)
    (out / "rm").mkdir(exist_ok=True)
    (out / "rm" / "config.yaml").write_text(dump_config(cfg))
    logger = MetricsLogger(out, "rm", cfg.run.tensorboard, cfg.run.wandb)
    try:
        result = train_reward_model(cfg.rm, train_rows, eval_rows, out / "rm" / "final", cfg.model, cfg.run.seed,
                                    device, pick_dtype(cfg.run.dtype, device), logger)
    finally:
        logger.close()
    sys.stdout.write(json.dumps(result.summary()) + "\n")


@app.command("gen-tests")
@_user_errors
def gen_tests_command(
    problems: Annotated[Path,
                        typer.Argument(help="JSON lines: id, statement, solutions [{language, source}], generator?")],
    out: Annotated[Path, typer.Argument(help="Where the kept problems go, with meta.tests (JSON lines).")],
    report: Annotated[Path | None,
                      typer.Option(help="The report (JSON); default OUT with suffix .report.json.")] = None,
    generator: Annotated[Path | None,
                         typer.Option(help="CYaRon generator for rows without one, or a dir of <id>.py.")] = None,
    model: Annotated[str | None,
                     typer.Option(help="HF causal LM dir that writes generators for rows still without one.")] = None,
    num_inputs: Annotated[int, typer.Option(help="Generator runs per problem.")] = 50,
    num_solutions: Annotated[int, typer.Option(help="Solutions run per problem, chosen at random.")] = 10,
    min_agree: Annotated[int, typer.Option(help="A test is kept when this many solutions agree on its output.")] = 7,
    min_passing: Annotated[int,
                           typer.Option(help="A problem is kept when this many solutions pass all its tests.")] = 9,
    min_tests: Annotated[int, typer.Option(help="A problem is kept only with this many tests.")] = 40,
    seed: Annotated[int, typer.Option(help="Seeds the choice of solutions and the generator seeds.")] = 0,
    workers: Annotated[int, typer.Option(help="Sandboxes run at once; 0 means one per CPU core.")] = 0,
    wall_seconds: Annotated[float, typer.Option(help="Wall-clock deadline of each run (generator or solution).")] = 4.0,
    max_new_tokens: Annotated[int, typer.Option(help="--model: longest generator it may write, in tokens.")] = 1024,
    temperature: Annotated[float, typer.Option(help="--model: sampling temperature; 0 is greedy.")] = 0.0,
    device: Annotated[str, typer.Option(help="--model: auto, cpu, cuda...")] = "auto",
    backend: Annotated[str, typer.Option(help=SANDBOX_BACKEND_HELP)] = "bubblewrap",
) -> None:
    """Generate test cases for code problems: CYaRon generator, majority vote of solutions (k1.5 sec. 2.3.5)."""
    from mirrorl.rewards.testgen import gen_tests_cli

    if backend not in ("auto", "bubblewrap", "none"):
        raise ValueError(f"--backend {backend!r}: expected bubblewrap or none ('auto' means bubblewrap)")
    settings = {"num_inputs": num_inputs, "num_solutions": num_solutions, "min_agree": min_agree,
                "min_passing": min_passing, "min_tests": min_tests, "seed": seed, "num_workers": workers,
                "limits": {"wall_seconds": wall_seconds},
                "sampling": {"temperature": temperature, "max_new_tokens": max_new_tokens, "batch_size": 16}}
    report = report or out.with_suffix(".report.json")
    result = gen_tests_cli(problems, out, report, generator, model, device=device, backend=backend, **settings)  # type: ignore[arg-type]
    summary = {key: result[key] for key in ("num_problems", "num_kept", "num_tests", "reasons")}
    sys.stdout.write(json.dumps({**summary, "report": str(report)}) + "\n")


@app.command("config")
@_user_errors
def show_config(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Print the resolved config (recipe + overrides + defaults) as YAML."""
    sys.stdout.write(dump_config(_config(config, overrides)))


if __name__ == "__main__":
    app()
