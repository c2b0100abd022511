from __future__ import annotations

import tomllib

import pytest
import yaml
from conftest import ROOT, datagen

from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.stages import STAGES
from pipeline.stages.plan import build_plan


def test_overrides_set_nested_keys_with_yaml_values():
    cfg = load_config(
        [
            "plan.n=7",
            "teacher.temperature=0.2",
            "plan.formats=[textbook]",
            "budget.max_cost_usd=1.5",
            "teacher.local.n_threads=1",
        ]
    )
    assert cfg.plan.n == 7
    assert cfg.teacher.temperature == 0.2
    assert cfg.plan.formats == ["textbook"]
    assert cfg.budget.max_cost_usd == 1.5
    assert cfg.teacher.local.n_threads == 1


def test_defaults_have_the_documented_keys():
    cfg = load_config([])
    assert (cfg.run.name, cfg.run.root, cfg.plan.words_per_prompt) == ("default", "runs", 3)
    assert cfg.teacher.base_url == "" and cfg.teacher.api_key_env == "OPENAI_API_KEY"
    assert cfg.force is False


@pytest.mark.parametrize(
    "override,needle",
    [
        ("plan.nn=3", "unknown config key 'plan.nn'"),
        ("teacher.bogus=1", "unknown config key 'teacher.bogus'"),
        ("plan.n=abc", "plan.n"),
        ("teacher.temperature=9", "teacher.temperature"),
    ],
)
def test_bad_override_is_one_clear_error(override, needle):
    with pytest.raises(DatagenError, match=needle.replace(".", r"\.")):
        load_config([override])


def test_cli_unknown_key_exits_nonzero_with_one_line(tmp_path):
    r = datagen("run", "plan.nn=3", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "plan.nn" in lines[0] and "allowed: n, words_per_prompt" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_cli_unknown_stage_lists_stages(tmp_path):
    r = datagen("run", "stage=nope", cwd=tmp_path)
    assert r.returncode == 2 and "unknown stage 'nope'" in r.stderr and "generate" in r.stderr


def test_config_show_prints_resolved_yaml(tmp_path):
    r = datagen("config", "show", "plan.n=11", "run.name=x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["plan"]["n"] == 11 and shown["run"]["name"] == "x"


def test_plan_is_byte_identical_for_same_seed_and_differs_for_another():
    a = build_plan(load_config(["plan.n=300"]))
    b = build_plan(load_config(["plan.n=300"]))
    c = build_plan(load_config(["plan.n=300", "seed=7"]))
    dump = lambda items: "".join(i.model_dump_json() for i in items)  # noqa: E731
    assert dump(a) == dump(b)
    assert dump(a) != dump(c)


def test_plan_has_no_repeated_combination_and_unique_ids():
    cfg = load_config(["plan.n=2000", "plan.words_per_prompt=1"])
    items = build_plan(cfg)
    combos = {(i.topic, i.subject, i.audience, i.format, tuple(i.words)) for i in items}
    assert len(combos) == len(items) == 2000
    assert len({i.id for i in items}) == 2000
    assert all(len(i.words) == 1 for i in items)
    assert {i.format for i in items} == {"textbook", "exercises"}


def test_plan_without_words_refuses_more_requests_than_combinations():
    with pytest.raises(DatagenError, match="plan.n"):
        build_plan(load_config(["plan.n=100000", "plan.words_per_prompt=0"]))


def test_plan_words_come_from_the_word_list():
    cfg = load_config(["plan.n=50"])
    vocab = {
        ln.split("\t")[0] for ln in cfg.project_path("data/words.tsv").read_text().splitlines()[1:]
    }
    for item in build_plan(cfg):
        assert len(item.words) == 3 and set(item.words) <= vocab


def test_plan_stage_writes_plan_and_is_not_redone(tmp_path):
    r = datagen("run", "stage=plan", "plan.n=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = tmp_path / "runs/default/plan/plan.jsonl"
    first = plan.read_bytes()
    assert len(first.splitlines()) == 5
    r = datagen("run", "stage=plan", "plan.n=5", cwd=tmp_path)
    assert r.returncode == 0 and "skipped" in r.stderr
    # a changed config redoes the stage; the earlier output is moved aside, not lost
    r = datagen("run", "stage=plan", "plan.n=6", cwd=tmp_path)
    assert r.returncode == 0 and len(plan.read_bytes().splitlines()) == 6
    moved = list((tmp_path / "runs/default/.superseded").glob("plan-*/plan.jsonl"))
    assert len(moved) == 1 and moved[0].read_bytes() == first
    assert plan.read_bytes().startswith(first)  # a longer plan extends the shorter one
    r = datagen("run", "stage=plan", "plan.n=6", "force=true", cwd=tmp_path)
    assert r.returncode == 0 and "force=true" in r.stderr


def test_missing_web_input_fails_before_any_stage_runs(tmp_path):
    r = datagen("run", "web.inputs=[/nonexistent/crawl.warc.gz]", cwd=tmp_path)
    assert r.returncode == 2
    assert "/nonexistent/crawl.warc.gz" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # plan did not run


# --------------------------------------------------------------------------- run.name, seed
@pytest.mark.parametrize("name", ["../../x", "ABS", "", ".cache", "a/b", ".."])
def test_run_name_must_be_one_folder_name(tmp_path, name):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    if name == "ABS":
        name = str(tmp_path / "abs")
    r = datagen("run", "stage=plan", "plan.n=2", f"run.name={name}", cwd=cwd)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.name: must be one folder name" in lines[0], r.stderr
    # nothing written anywhere: not under the cwd, not beside it, not at the absolute path
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_numeric_run_name_is_a_name(tmp_path):
    r = datagen("run", "stage=plan", "plan.n=2", "run.name=2024", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs/2024/plan/plan.jsonl").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1.5"])
def test_seed_out_of_range_is_one_clear_error(tmp_path, seed):
    r = datagen("run", "stage=plan", "plan.n=2", f"seed={seed}", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datagen: error: override: seed:"), r.stderr
    assert not (tmp_path / "runs").exists()


def test_the_largest_seed_runs(tmp_path):
    r = datagen("run", "stage=plan", "plan.n=2", f"seed={2**32 - 1}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--nonsense"], "No such option: --nonsense"),
        (["bogus"], "No such command 'bogus'"),
        (["config", "show", "--x"], "No such option: --x"),
    ],
)
def test_a_usage_error_is_one_line(tmp_path, args, needle):
    r = datagen(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("datagen: error: ") and needle in r.stderr


def test_no_arguments_prints_the_help_page(tmp_path):
    r = datagen(cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert "Usage: datagen" in r.stdout and all(c in r.stdout for c in ("run", "review", "config"))


def test_version(tmp_path):
    r = datagen("--version", cwd=tmp_path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert r.returncode == 0 and r.stdout == f"datagen {project['version']}\n", r.stderr


def test_run_help_lists_the_stages_in_order_keys_and_examples(tmp_path):
    r = datagen("run", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    at = [text.index(f". {s.name} ") for s in STAGES]  # "1. plan  ...", numbered in order
    assert at == sorted(at)
    for key in ("stage=", "run.name=", "plan.n=", "teacher.base_url=", "force=true"):
        assert key in text
    assert "Examples:" in text and text.count("datagen run") >= 3
    for cmd in (["--help"], ["run", "--help"], ["review", "--help"], ["config", "--help"]):
        out = datagen(*cmd, cwd=tmp_path).stdout
        assert "``" not in out and ":ref:" not in out and "Usage: datagen" in out
