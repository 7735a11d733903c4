"""Plan a run on a hardware profile: which stages run for the task, where every role sits, the memory each rank
needs (parameters, gradients, optimizer states, activations, KV cache) against what the GPUs offer, and what each
stage costs in hours, GPU-hours and dollars.

    python -m jobs.plan --profile 4xa100 --model-size 7B [--task-type assistant|code|extraction|creative|safety]
    python -m jobs.plan --config configs/my-recipe.yaml [section.key=value ...]

Prints the plan; a plan that cannot fit exits with status 2 and one line naming the stage, the role, the memory
term that overflows and what to change. Profiles are the recipes under configs/ (jobs/planning/profiles.py).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import get_args

from common.config import TaskType, load_config
from common.errors import PlanRefused
from jobs import cli
from jobs.planning import costs, memory, profiles


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.plan", description=__doc__.split("\n\n")[0],
                                epilog="memory model (jobs/planning/memory.py):\n" + textwrap.indent(
                                    memory.__doc__.split("\n\n", 1)[1], "  ")
                                + "\n\ntime and cost model (jobs/planning/costs.py):\n" + textwrap.indent(
                                    costs.__doc__.split("\n\n", 1)[1], "  "),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--profile", choices=sorted(profiles.PROFILE_RECIPES), default="cpu",
                        help="hardware profile, i.e. its recipe under configs/ (default: cpu)")
    source.add_argument("--config", "-c", metavar="YAML", help="plan any recipe file instead of a named profile")
    p.add_argument("--model-size", metavar="SIZE", help="model size such as 7B, 13B, 70B (default: model.size_b, "
                                                        "else counted from the checkpoint at model.path)")
    p.add_argument("--task-type", choices=get_args(TaskType), help="what the model is for (default: "
                                                                   "profile.task_type); decides SFT only vs RLHF")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. "
                                                                            "model.gradient_checkpointing=true")
    return p


def main(argv: list[str] | None = None) -> profiles.Plan:
    args = parser().parse_args(argv)
    cfg = (load_config(args.config, args.overrides) if args.config
           else profiles.load_profile(args.profile, args.overrides))
    plan = profiles.make_plan(cfg, args.model_size, args.task_type)
    print(profiles.format_plan(plan))
    if not plan.fits:
        raise PlanRefused(plan.problems[0])
    return plan


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.plan", main))
