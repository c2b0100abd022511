"""The `datagen` command: run stages, show config, review outputs."""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer
from rich.console import Console

from pipeline.config import dump_config, load_config
from pipeline.errors import DatagenError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Build phi-style textbook-quality pretraining corpora.",
)
config_app = typer.Typer(help="Inspect the resolved configuration.")
app.add_typer(config_app, name="config")

ARGS_HELP = "stage=NAME and key=value config overrides (dotted keys, YAML values)"
Args = Annotated[list[str] | None, typer.Argument(help=ARGS_HELP)]


def _split_stage(args: list[str]) -> tuple[str | None, list[str]]:
    stage = None
    rest = []
    for a in args:
        if a.startswith("stage="):
            stage = a.split("=", 1)[1] or None
        else:
            rest.append(a)
    return stage, rest


@app.command()
def run(args: Args = None) -> None:
    """Run one stage (stage=NAME) or every stage in order."""
    from pipeline.stages import resolve_stage, run_pipeline
    from pipeline.summary import print_summary

    stage, overrides = _split_stage(args or [])
    cfg = load_config(overrides)
    resolve_stage(stage)  # unknown stage fails before any work
    console = Console(stderr=True)
    results = run_pipeline(cfg, stage, console)
    print_summary(results, Console())


@app.command()
def review(args: Args = None) -> None:
    """Write a self-contained HTML report of sampled outputs and print its path.
    ``n=50`` is short for ``review.n=50``."""
    from pipeline.review import write_review

    stage, overrides = _split_stage(args or [])
    overrides = [f"review.{o}" if o.startswith("n=") else o for o in overrides]
    cfg = load_config(overrides)
    print(write_review(cfg, stage))


@config_app.command("show")
def config_show(args: Args = None) -> None:
    """Print the resolved config (defaults + overrides) as YAML."""
    _, overrides = _split_stage(args or [])
    print(dump_config(load_config(overrides)), end="")


INTERRUPTED = "datagen: interrupted; run the same command again to resume"


def main() -> None:
    try:
        # typer turns Ctrl-C into a returned 130 when not in standalone mode
        rv = app(standalone_mode=False)
    except DatagenError as e:
        print(f"datagen: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        rv = 130
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    if rv == 130:
        print(INTERRUPTED, file=sys.stderr)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
