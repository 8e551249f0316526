"""``expotion experiment slurm``: one sbatch script per row, one for the shared steps and one that collects.

Each script is a plain bash script whose ``#SBATCH`` lines are comments to bash, so it runs as written without
SLURM. A row's script runs ``expotion experiment run FILE --rows NAME`` (the shared steps are skipped when done),
the collecting one ``expotion experiment table``. ``submit.sh`` submits them in order with SLURM dependencies.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from expotion.experiments.runner import Plan

HEADER = """#!/bin/bash
#SBATCH --job-name={job}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
{gpus}#SBATCH --output={log}
set -euo pipefail
cd {cwd}
export HF_HUB_OFFLINE=1
"""


def script(plan: Plan, job: str, words: list[str], gpus_per_node: int) -> str:
    folder = (plan.out / "slurm").resolve()
    header = HEADER.format(job=job, nodes=plan.num_nodes, log=folder / f"{job}-%j.out", cwd=shlex.quote(str(Path.cwd())),
                           gpus=f"#SBATCH --gpus-per-node={gpus_per_node}\n" if gpus_per_node else "")
    return header + shlex.join([sys.executable, "-m", "expotion.cli.main", "experiment", *words]) + "\n"


def write_scripts(plan: Plan, gpus_per_node: int = 0) -> list[Path]:
    """The scripts, in the order they run: shared, one per row, collect; then ``submit.sh``."""
    folder = plan.out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    file, out = str(plan.experiment.path), str(plan.out)
    parallel = ["--devices", str(plan.devices), "--num-nodes", str(plan.num_nodes)]
    prefix = plan.experiment.path.stem
    scripts = {"shared.sbatch": script(plan, f"{prefix}-shared", ["run", file, "--out", out, "--rows", "--no-table"], 0)}
    for row in plan.experiment.rows:
        scripts[f"row-{row.name}.sbatch"] = script(
            plan, f"{prefix}-{row.name}", ["run", file, "--out", out, "--rows", row.name, "--no-table", *parallel],
            gpus_per_node)
    scripts["collect.sbatch"] = script(plan, f"{prefix}-collect", ["table", file, "--out", out], 0)
    rows = [name for name in scripts if name.startswith("row-")]
    submit = ["#!/bin/bash", "# Submit the experiment's jobs: rows after the shared steps, the table after every row.",
              "set -euo pipefail", f"cd {shlex.quote(str(folder.resolve()))}",
              "shared=$(sbatch --parsable shared.sbatch)", "rows=\"\""]
    submit += [f"rows=\"$rows:$(sbatch --parsable --dependency=afterok:$shared {name})\"" for name in rows]
    submit += ["sbatch --dependency=afterany$rows collect.sbatch"]
    scripts["submit.sh"] = "\n".join(submit) + "\n"
    written = []
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
        written.append(path)
    return written
