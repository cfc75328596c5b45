"""``tvls-prefetch FILE``: download every checkpoint the sweep names, then check it loads offline.

Run it on a login node (with internet) before ``tvls-launch``: compute nodes read the shared
Hugging Face cache (``HF_HOME``) with ``HF_HUB_OFFLINE=1``. One line per checkpoint goes to
stdout, then a summary; the exit code is 1 if any checkpoint is missing or does not load.
"""

from __future__ import annotations

import argparse
import sys

from rich.text import Text

from tunevlseg.cli import _app

STYLES = {
    "downloaded": "green",
    "already cached": "green",
    "local folder": "green",
    "skipped": "dim",
    "would download": "cyan",
    "failed": "bold red",
}


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-prefetch",
        "Download the models and tokenizers an experiment file names into the Hugging Face "
        "cache (HF_HOME), then check that each one loads offline.",
        _app.examples(
            "tvls-prefetch experiments/medical.yaml --dry-run   # what would be fetched",
            "HF_HOME=/shared/hf tvls-prefetch experiments/medical.yaml",
        ),
    )
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be fetched; no network, no loading"
    )
    return p


def command(args: argparse.Namespace) -> int:
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.models.prefetch import hub_cache_dir, plan_items, prefetch_item

    experiment = load_experiment(args.experiment)
    items = plan_items(expand(experiment).studies)
    out, err = _app.data(), _app.messages()
    err.print(f"Hugging Face cache: {hub_cache_dir()}")
    if not items:
        err.print("the experiment's studies use no model")
        return _app.EXIT_OK
    width = max(len(item.pretrained) for item in items)
    outcomes = []
    for item in items:
        if item.kind == "hub" and not args.dry_run:
            err.print(f"checking {item.pretrained} ...")
        outcome = prefetch_item(item, dry_run=args.dry_run)
        outcomes.append(outcome)
        line = Text()
        line.append(f"{outcome.status:<15}", style=STYLES[outcome.status])
        line.append(f" {item.family:<8} {item.pretrained:<{width}}  {outcome.detail}")
        out.print(line)
    counts = {status: sum(o.status == status for o in outcomes) for status in STYLES}
    parts = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    suffix = " (dry run: nothing downloaded or loaded)" if args.dry_run else ""
    out.print(f"{len(outcomes)} model(s): {parts}{suffix}")
    if any(not outcome.ok for outcome in outcomes):
        err.print("some models are not available offline: compute nodes could not load them")
        return _app.EXIT_FAILED
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
