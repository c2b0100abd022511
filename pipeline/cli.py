"""The `datagen` command: run stages, show config, review outputs."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline import __version__
from pipeline.config import PipelineConfig, dump_config, load_config
from pipeline.errors import DatagenError
from pipeline.stages import STAGES

PROG = "datagen"
app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Build phi-style textbook-quality pretraining corpora.",
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ARGS_HELP = "stage=NAME and key=value config overrides (dotted keys, YAML values)"
Args = Annotated[list[str] | None, typer.Argument(help=ARGS_HELP)]

# the keys most runs set: (key=VALUE, meaning); defaults come from the config model
COMMON_KEYS = (
    ("stage=NAME", "one stage, after any upstream stage not yet finished"),
    ("run.name=NAME", "the run folder under run.root"),
    ("plan.n=N", "number of generation requests"),
    ("teacher.base_url=URL", "an OpenAI-compatible API; empty: embedded llama.cpp"),
    ("teacher.model=NAME", "the model name sent to the API"),
    ("budget.max_cost_usd=X", "stop before the teacher costs more than X"),
    ("dry_run=true", "generate: estimate tokens, cost, time; send nothing"),
    ("teacher.mode=batch", "generate through the provider's Batch API"),
    ("executor.kind=ray", "run the CPU stages on Ray (local|ray)"),
    ("force=true", "redo the stage even if it finished"),
    ("retry_failed=true", "generate: request only the failed items again"),
    ("web.inputs=[PATHS]", "web data to add; [] for none"),
)
HELP_WIDTH = 78  # typer's help is 80 columns wide when not on a terminal
EXAMPLES = (
    "datagen run",
    "datagen run stage=generate plan.n=200 run.name=big",
    "OPENAI_API_KEY=... datagen run run.name=openai budget.max_cost_usd=5 \\\n"
    "    teacher.base_url=https://api.openai.com/v1 teacher.model=gpt-4o-mini",
)


def _default(defaults: dict[str, Any], key: str) -> Any:
    node: Any = defaults
    for part in key.split("=")[0].split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _run_help() -> str:
    """Help for `datagen run`, built from the stage registry and the config defaults."""
    width = max(len(s.name) for s in STAGES)
    stages = "\n".join(f"  {i}. {s.name:<{width}}  {s.about}" for i, s in enumerate(STAGES, 1))
    kw = max(len(k) for k, _ in COMMON_KEYS)
    keys, defaults = [], PipelineConfig().model_dump(mode="json")
    for k, meaning in COMMON_KEYS:
        line, d = f"  {k:<{kw}}  {meaning}", _default(defaults, k)
        with_default = f"{line} (default: {d})"
        ok = isinstance(d, str | int) and not isinstance(d, bool) and d != ""
        keys.append(with_default if ok and len(with_default) <= HELP_WIDTH else line)
    text = (
        "Run one stage (stage=NAME) or every stage in order.\n\n"
        "A finished stage is skipped, a stage whose config changed is redone, a killed one "
        "resumes. The run folder is locked while a run works in it.\n\n"
        f"Stages, in order:\n{stages}\n\n"
        "Most used keys (any config key works, see: datagen config show):\n"
        + "\n".join(keys)
        + "\n\nExamples:\n"
        + "\n".join("  " + e for e in EXAMPLES)
    )
    return escape(text)  # [ ] are rich markup in typer's help


def _split_stage(args: list[str]) -> tuple[str | None, list[str]]:
    stage = None
    rest = []
    for a in args:
        if a.startswith("stage="):
            stage = a.split("=", 1)[1] or None
        else:
            rest.append(a)
    return stage, rest


def _version(value: bool) -> None:
    if value:
        print(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Build phi-style textbook-quality pretraining corpora."""


@app.command(help=_run_help())
def run(args: Args = None) -> None:
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

    n=50 is short for review.n=50; stage=NAME reviews one stage (default: filter and web)."""
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
        rv = app(prog_name=PROG, standalone_mode=False)
    except DatagenError as e:
        print(f"datagen: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        rv = 130
    except typer.TyperException as e:  # typer's (vendored click) usage errors
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # `datagen` alone: the help page
            if e.format_message():  # rich help is printed already; plain help is the message
                print(e.format_message(), file=sys.stderr)
        else:
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            msg = e.format_message().rstrip(".")
            print(f"datagen: error: {msg}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    if rv == 130:
        print(INTERRUPTED, file=sys.stderr)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
