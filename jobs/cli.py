"""Shared command line for every job: `python -m jobs.<name> --config X.yaml [section.key=value ...]`.

`--help` lists every config key with its default and meaning, so the flags and the YAML are one vocabulary.
Errors people can fix (bad config, bad data row, missing model, unreachable cluster) print one line naming
what and where, and exit with status 2; nothing half-written is left behind by the jobs themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import textwrap
import threading
from typing import Callable, Iterator

from common.config import Config, load_config
from common.configlib import describe, to_dict
from common.errors import USER_ERRORS, Preempted, RunFailed
from common.signals import PREEMPTED_EXIT


def config_help(sections: tuple[str, ...]) -> str:
    rows = [r for r in describe(Config) if r[0].split(".")[0] in sections]
    width = max(len(key) for key, _, _ in rows)
    lines = ["config keys (set in the YAML file or as key=value overrides; defaults in brackets):"]
    for key, default, help_text in rows:
        wrapped = textwrap.wrap(f"{help_text} [{default}]", width=100 - width)
        lines.append(f"  {key.ljust(width)}  {wrapped[0] if wrapped else ''}")
        lines.extend(f"  {'':{width}}  {more}" for more in wrapped[1:])
    return "\n".join(lines)


def parser(prog: str, description: str, sections: tuple[str, ...]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=config_help(sections),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="YAML", help="recipe file under configs/ (default: built-in defaults "
                                                          "= the tiny CPU recipe's base)")
    p.add_argument("--address", metavar="ADDR", help="join this Ray cluster (same as ray.address=ADDR; "
                                                     "RAY_ADDRESS is used when neither is given)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. lora.rank=8")
    return p


def parse(prog: str, description: str, sections: tuple[str, ...], argv: list[str] | None = None,
          extend: Callable[[argparse.ArgumentParser], None] | None = None):
    """(config, parsed arguments); `extend` adds a job's own options to the shared parser."""
    p = parser(prog, description, sections)
    if extend is not None:
        extend(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    cfg = load_config(args.config, overrides)
    from cluster.runtime import prepare_process

    prepare_process(cfg.ray)  # before anything imports Ray: it reads its auth mode at import time
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        sys.exit(0)
    return cfg, args


def run_main(prog: str, main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a job's main, turning user errors into one clear line and exit status 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT
    except RunFailed as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


@contextlib.contextmanager
def cluster_winding_down(cluster) -> Iterator[None]:
    """Run the block (a job's last figures and reports, which read only files) while a Ray cluster the job started
    (`cluster`: runtime.start's answer) ends on a thread: Ray's shutdown is 0.35 s mostly spent waiting on its
    threads and processes. A cluster that was up before the job (a pipeline's, a test session's) stays up."""
    import gc

    from cluster import runtime

    def stop() -> None:
        try:
            runtime.stop()
        except Exception as exc:  # noqa: BLE001 - the exit hook tries again; the job's outputs are what matter here
            logging.getLogger("rayalign.runtime").warning("stopping Ray while the figures drew: %s", exc)

    stopping = threading.Thread(target=stop, name="ray-stop")
    if cluster.started_here:
        # Cyclic garbage that holds Ray handles (a restarted run's roles) is freed now, while Ray is connected: a
        # collection while the figures draw would release them into a core worker that is shutting down.
        gc.collect()
        stopping.start()
    try:
        yield
    finally:
        if cluster.started_here:
            stopping.join()


def import_in_background(*modules: str) -> threading.Thread:
    """Import `modules` on a thread and return it (join it before relying on them): a job's driver starts Ray,
    which mostly waits on its own processes, while the heavy Python imports it needs next (torch, Transformers'
    tokenizer classes: seconds of CPU on a small machine) load on the other core. A failing import is left to
    the real import later, which raises it where it belongs."""
    def load() -> None:
        from common.imports import import_frozen

        try:
            import_frozen(*modules)
        except Exception:  # noqa: BLE001 - re-raised by the driver's own import
            return

    thread = threading.Thread(target=load, name="import-in-background", daemon=True)
    thread.start()
    return thread
