"""`omsjax`'s entry point: `build_parser` (the top-level parser, one `add_<command>` per command) and `main`."""

from __future__ import annotations

import argparse
import sys

from omsjax import fields
from omsjax.cli.common import (
    add_cache_args,
    add_distributed_args,
    enable_compile_cache,
    join_processes,
    one_device_per_core,
)
from omsjax.cli.compare_cmd import add_compare
from omsjax.cli.evaluate_sample_cmds import add_evaluate, add_sample
from omsjax.cli.gmm_cmd import add_gmm
from omsjax.cli.optimize_steps_cmd import add_optimize_steps
from omsjax.cli.search_cmd import add_search
from omsjax.cli.stages_cmds import add_stages
from omsjax.cli.train_cmd import add_train
from omsjax.cli.zoo_cmd import add_zoo
from omsjax.files import FolderLocked

# The description of `omsjax --help`.
DESCRIPTION = """The `omsjax` command.

omsjax compare [--zoo DIR] [--model K] [--nfe 5 10] [--json]
    FD of the preset solvers at several NFEs on one model of a zoo (default: the shipped digits zoo).
omsjax evaluate --zoo DIR (--model K --solver NAME --nfe N | --schedule FILE.json) [--ref-samples K] [--json]
    FD, NFE, cost and seconds of one schedule; with --ref-samples, its trajectory error against the diffrax ODE
    endpoint.
omsjax sample ... --out grid.png
    A PNG grid of samples.
omsjax train --config NAME|FILE.json --out DIR [--steps N] [--precond P] [--fdm-m M] [--weight-clamp-warmup W]
        [--ema-warmup] [--resume] [--add-to-zoo DIR [--latency-batch N]]
    Train a digits U-Net with resumable orbax checkpoints (FILE.json: a TrainConfig.to_dict(), e.g. a run's
    config.json, so that `omsjax train --config DIR/config.json` reproduces that run), or a multi-stage network
    when FILE.json holds a StageTrainConfig (from `omsjax stages config`, or a multi-stage run's config.json).
omsjax stages cluster [--grid G] [--samples S] [--alpha A] [--prediction eps|x0] [--partition K] [--seed N]
        [--json] [--out FILE.json]
    Timestep clustering of the digits train split with its empirical optimal denoiser (continuous linear VP): the
    threshold-rule boundaries (t1, t2) at alpha, the DP partition into K stages and the uniform-in-t and
    uniform-in-logSNR boundaries, as t, lambda and EDM sigma.
omsjax stages config --boundaries T1 T2 [--decoders 48 32 8] [--encoder 32] [--steps N] [--ema-warmup]
        [--out FILE.json]
    A multi-stage training config (StageTrainConfig JSON) for `omsjax train --config FILE.json`.
omsjax search --zoo DIR (--nfe N | --budget SECONDS) [--mode solver|model|joint] [--thorough] --out DIR
    Search a per-step schedule with the S3 loop (GA, true evaluation, predictor) and report the baselines
    (--thorough: the full-size search; presets the zoo ships evaluated, evaluations.json, are read, not redone).
omsjax optimize-steps --zoo DIR [--model K] --solver NAME --nfe N [--method trajectory|bound|ays|fd] [--finetune]
        --out DIR
    Learn the timesteps of a solver (error bound, trajectory fit through the sampler, AYS-style search, or the FD),
    optionally alternated with fine-tuning on the chosen steps; compare with the standard spacings.
omsjax zoo [--zoo DIR] [--remeasure-latency] [--cache-presets NFE [NFE ...]]
    List a zoo's models; measure their latencies again on this machine; evaluate the presets of solver-mode
    searches once and store them in the zoo.
omsjax gmm [--nfe 4 5 6 8 10] [--skip logSNR] [--json]
    Sample an exact Gaussian-mixture model with every preset and EDM's Heun sampler (even NFE) and print the error
    against the diffrax reference endpoint (one compiled program per schedule length serves every preset).

Every command runs on several processes (a multi-host job: every process runs the same command) with
--distributed (joined from SLURM, Open MPI or a TPU pod's environment) or --coordinator HOST:PORT --num-processes
N --process-id I; process 0 alone writes files.

Every command keeps the programs it compiles in JAX's persistent compilation cache (--compile-cache DIR; default
$OMSJAX_COMPILE_CACHE, else ~/.cache/omsjax/jax), so a second run of the same command starts without compiling;
--no-compile-cache turns it off.
"""

# The subcommands in the order `omsjax --help` lists them.
_COMMANDS = (
    add_gmm,
    add_train,
    add_stages,
    add_evaluate,
    add_compare,
    add_search,
    add_zoo,
    add_optimize_steps,
    add_sample,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown flag, an invalid choice, a value that is not a number) are one
    line, "omsjax: error: argument --mode: invalid choice: ...", and exit code 2, as every other `omsjax` error;
    `--help` shows the usage. Its subcommands' parsers are of this class too."""

    def error(self, message: str):
        command = self.prog.removeprefix("omsjax").strip()  # "search", "stages cluster"; "" for the top level
        self.exit(2, f"omsjax: error: {command + ': ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="omsjax", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    for leaf in _leaves(sub):
        add_cache_args(leaf)
        add_distributed_args(leaf)
    return p


def _leaves(sub: argparse._SubParsersAction):
    """The parsers of the commands that run (`stages cluster`, not `stages`)."""
    for parser in dict.fromkeys(sub.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            yield from _leaves(nested[0])
        else:
            yield parser


def main(argv=None) -> int:
    """Run `omsjax` with `argv`; returns the exit code (2, with a one-line "omsjax: error: ..." on stderr, for a
    ValueError, an OSError or a locked folder: bad arguments, unreadable or unwritable files)."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "zoo") and args.zoo is None:
        from omsjax.zoo import DEFAULT_ZOO

        args.zoo = DEFAULT_ZOO
    try:
        check_int_flags(args)
        joined = join_processes(args)
        if joined is not None:
            print(f"omsjax: {joined}", file=sys.stderr, flush=True)
        enable_compile_cache(args)
        return args.func(args)
    except (ValueError, OSError, FolderLocked) as e:  # bad input or files: one line, exit code 2, no traceback
        print(f"omsjax: error: {_one_line(e)}", file=sys.stderr)
        return 2


# The least value of each integer flag (by its `dest`). A seed is below `fields.SEARCH_SEED_LIMIT` (2**31): JAX
# keeps only the low 32 bits of a larger seed (without x64), and the search derives other seeds as seed + 1000..
INT_MINIMUM = {
    **dict.fromkeys(("model", "ref_model", "labels", "seed", "ref_samples", "weight_clamp_warmup", "warmup"), 0),
    **dict.fromkeys(("stages", "rounds"), 0),
    **dict.fromkeys(("order", "nfe", "steps", "batch", "batch_size", "latency_batch", "cache_presets"), 1),
    **dict.fromkeys(("initial_random", "per_stage", "generations", "predictor_epochs", "final_top"), 1),
    **dict.fromkeys(("finetune_steps", "samples", "partition", "decoders", "encoder", "channel_mults"), 1),
    **dict.fromkeys(("num_samples", "final_samples", "train_samples", "heldout_samples", "population"), 2),
    "grid": 3,
    **dict.fromkeys(("num_processes", "heartbeat_timeout"), 1),
    "process_id": 0,
}


def check_int_flags(args) -> None:
    """Every integer flag given: at least its `INT_MINIMUM`, below 2**63 (2**31 for a seed); else a ValueError
    naming the flag as typed (e.g. "--final-samples must be an int >= 2, got 0"). Runs before any work."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if dest not in INT_MINIMUM or value is None or not all(isinstance(v, int) for v in values):
            continue
        lo, hi = INT_MINIMUM[dest], fields.SEARCH_SEED_LIMIT if dest == "seed" else 2**63
        for v in values:
            flag = "--" + dest.replace("_", "-")
            fields.count(flag, v, lo)
            if v >= hi:
                raise ValueError(f"{flag} must be below {'2**31 (a seed)' if dest == 'seed' else '2**63'}, got {v}")


def console() -> int:
    """The `omsjax` script and `python -m omsjax`: `main` of this process's arguments, where `omsjax search` first
    takes one CPU device per core (`common.one_device_per_core`; in-process callers of `main` keep their devices)."""
    argv = sys.argv[1:]
    if argv[:1] == ["search"]:
        one_device_per_core()
    return main(argv)


def _one_line(e: BaseException) -> str:
    """An error's message on one line (its lines joined)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
