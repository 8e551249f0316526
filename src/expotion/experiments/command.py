"""``expotion experiment``: a table of systems (the paper's Table 1 by default) from one experiment file.

    expotion experiment run FILE [--out DIR] [--rows NAME ...] [--devices N] [--num-nodes M]
    expotion experiment slurm FILE --out DIR [--devices N] [--num-nodes M] [--gpus-per-node G]
    expotion experiment table FILE [--out DIR]

``run`` trains (or reuses), generates and evaluates every row, skipping each step whose inputs are unchanged, and
writes ``table1.md``, ``table1.csv``, ``table1.png`` and ``table1.provenance.json`` into DIR (default
``results/<file name>``). Its exit status is 0 when every row finished, 1 when a row failed (the table says why),
2 when the file or a shared step (the cache, the captions, the references) failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from expotion.core import option_types as opt
from expotion.experiments.runner import Plan, log, run_experiment
from expotion.experiments.slurm import write_scripts
from expotion.experiments.spec import ExperimentError, load_experiment
from expotion.experiments.steps import StepFailed
from expotion.experiments.table import STEM, write_table

ROW_FAILED, UNUSABLE = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment_command", required=True)
    for name, text in (("run", "train, generate and evaluate every row, then write the table"),
                       ("slurm", "write one sbatch script per row (and the shared and collecting ones)"),
                       ("table", "collect the finished rows into the table")):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", type=Path, help="the experiment file (e.g. lightning_configs/experiments/table1.yaml)")
        p.add_argument("--out", type=Path, required=name == "slurm", default=None,
                       help="where its runs, logs and table go (default: results/<file name>)")
        if name != "table":
            p.add_argument("--devices", type=opt.positive_int, default=1, help="devices per node for training and "
                                                                               "generation (as expotion train/generate)")
            p.add_argument("--num-nodes", type=opt.positive_int, default=1, help="nodes per row")
        if name == "run":
            p.add_argument("--rows", nargs="*", default=None, metavar="NAME",
                           help="only these rows (none: only the shared steps); default every row")
            p.add_argument("--no-table", action="store_true", help="leave the table to `expotion experiment table` "
                                                                   "(the SLURM row jobs)")
        if name == "slurm":
            p.add_argument("--gpus-per-node", type=opt.non_negative_int, default=0,
                           help="#SBATCH --gpus-per-node of the row jobs (0: none asked for)")
    parser.set_defaults(func=run)


def plan_of(args: argparse.Namespace) -> Plan:
    experiment = load_experiment(args.file)
    out = args.out or Path("results") / args.file.stem
    return Plan(experiment, out, getattr(args, "devices", 1), getattr(args, "num_nodes", 1))


def run(args: argparse.Namespace) -> int:
    try:
        plan = plan_of(args)
        if args.experiment_command == "run":
            unknown = sorted(set(args.rows or ()) - {r.name for r in plan.experiment.rows})
            if unknown:
                raise ExperimentError(f"{args.file}: --rows: no row named {', '.join(unknown)} (rows: "
                                      f"{', '.join(r.name for r in plan.experiment.rows)})")
    except ExperimentError as err:
        print(f"expotion experiment: {err}", file=sys.stderr)
        return UNUSABLE
    if args.experiment_command == "slurm":
        for path in write_scripts(plan, args.gpus_per_node):
            print(path)
        return 0
    failed = {}
    if args.experiment_command == "run":
        try:
            failed = {k: v for k, v in run_experiment(plan, args.rows).items() if v}
        except StepFailed as err:
            print(f"expotion experiment: a shared step failed, no row can run: {err}", file=sys.stderr)
            return UNUSABLE
        if args.no_table:
            return ROW_FAILED if failed else 0
    results = write_table(plan)
    finished = sum(r.status == "ok" for r in results)
    log(f"{finished} of {len(results)} rows finished; table: {plan.out / f'{STEM}.md'}")
    for r in results:
        if r.status != "ok":
            log(f"{r.row.name}: {r.status}: {r.reason}")
    if args.experiment_command == "table":
        return 0
    return ROW_FAILED if failed else 0
