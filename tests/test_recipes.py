"""revise, reverse and preferences against a fake OpenAI-compatible server: faults, kill -9 and
resume without paying twice, the records and the datasets they write. Real models run these
stages in test_e2e_teacher.py."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from conftest import datagen
from fake_openai import ServerThread
from recipes_testdata import RecipeOpenAI
from test_generate import FAST, kill_midway, read_jsonl
from web_testdata import DOLMA0, OPENSTAX

from pipeline.records import Document
from pipeline.runs import read_shards

# the faults of test_generate, minus a slow answer (time) and a server that never recovers
SCRIPTS = [[], ["429"], ["500", "500"], ["malformed"], ["drop"], ["empty", "429"], []]
# classifier.source=teacher (with annotate.n=0: no model): the recipes are the subject, not the
# reference classifier, which would read and extract the default web inputs in every run
BASE = ["teacher.model=fake-model", "annotate.n=0", "classifier.source=teacher", *FAST]


def faults(key: str) -> list[str]:
    return SCRIPTS[int(key, 16) % len(SCRIPTS)]


def args(url: str, *extra: str) -> list[str]:
    return ["run", f"teacher.base_url={url}", *BASE, *extra]


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def revise_docs(run: Path) -> list[dict]:
    return [d for p in sorted((run / "revise").glob("outputs*.jsonl")) for d in read_jsonl(p)]


# --------------------------------------------------------------------------- revise
def test_revise_keeps_a_rewrite_only_when_it_scores_higher_and_filter_reads_the_result(tmp_path):
    fake = RecipeOpenAI(script=faults)
    with ServerThread(fake) as srv:
        r = datagen(*args(srv.url, "stage=filter", "plan.n=10", "revise.rounds=2"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs/default"
    drafts = {d["id"]: d for d in read_jsonl(run / "generate/outputs.jsonl")}
    docs = revise_docs(run)
    assert sorted(d["id"] for d in docs) == sorted(drafts)  # each draft once, none lost
    accepted = 0
    for d in docs:
        rev = d["revision"]
        assert rev["draft"] == drafts[d["id"]]["text"] and rev["error"] is None
        assert rev["draft_critique"]["score"] == sum(rev["draft_critique"]["ratings"].values())
        text, score = rev["draft"], rev["draft_score"]
        for rnd in rev["rounds"]:
            assert rnd["critique"]["score"] == score  # each round starts from the winner
            assert rnd["accepted"] == (rnd["revised_critique"]["score"] > score)
            if rnd["accepted"]:
                text, score = rnd["revised"], rnd["revised_critique"]["score"]
                accepted += 1
        assert d["text"] == text and rev["final_score"] == score
        # a rejected rewrite ends the rounds (the same request would get the cached answer)
        assert all(x["accepted"] for x in rev["rounds"][:-1])
    assert accepted > 0 and any(not x["accepted"] for d in docs for x in d["revision"]["rounds"])
    m = manifest(run, "revise")
    assert m["status"] == "finished" and m["items"] == 10 and m["failed"] == 0
    assert m["accepted"] == sum(any(x["accepted"] for x in d["revision"]["rounds"]) for d in docs)
    r1 = m["rounds"][0]
    assert r1["round"] == 1 and r1["documents"] == 10 and r1["accepted"] >= 1
    assert r1["mean_score_after"] > r1["mean_score_before"] and r1["mean_score_change"] > 0
    assert r1["prompt_tokens"] > 0 and r1["cost_usd"] is None  # fake-model has no price
    # the faults were retried, and no answered request was asked again
    assert sum(fake.after_success.values()) == 0
    # later stages read the revisions: filter's input is revise's output
    assert manifest(run, "filter")["input"] == 10


def test_revise_unparseable_critique_keeps_the_draft_with_the_reason(tmp_path):
    class Rambling(RecipeOpenAI):
        def _text(self, messages):  # type: ignore[override]
            if messages[-1]["content"].startswith("Critique the draft"):
                return "This draft is quite good overall, I would say."
            return super()._text(messages)

    with ServerThread(Rambling()) as srv:
        r = datagen(*args(srv.url, "stage=revise", "plan.n=3", "revise.rounds=1"), cwd=tmp_path)
    # nothing could be critiqued: one clear line, and the drafts are kept on the record
    assert r.returncode == 2 and "datagen: error: revise: no document was critiqued" in r.stderr
    assert "Traceback" not in r.stderr
    docs = revise_docs(tmp_path / "runs/default")
    assert len(docs) == 3
    for d in docs:
        assert d["text"] == d["revision"]["draft"]
        assert d["revision"]["error"].startswith("unparseable: no rubric ratings")


def test_revise_kill_9_then_rerun_pays_for_nothing_twice(tmp_path):
    fake = RecipeOpenAI(latency_s=0.05)
    with ServerThread(fake) as srv:
        base = args(
            srv.url, "stage=revise", "plan.n=16", "revise.rounds=2", "teacher.concurrency=4"
        )
        r = datagen(*base[:-1], "stage=generate", cwd=tmp_path)  # generate first, then revise
        assert r.returncode == 0, r.stderr
        out = tmp_path / "runs/default/revise/outputs.jsonl"
        kill_midway(base, tmp_path, out, min_lines=4)
        before = read_jsonl(out)
        assert 4 <= len(before) < 16
        at_kill = dict(fake.attempts)
        r = datagen(*base, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    docs = revise_docs(tmp_path / "runs/default")
    assert len(docs) == len({d["id"] for d in docs}) == 16
    # what finished before the kill is kept as it was, and none of its requests went out again
    done = {d["id"]: d for d in docs}
    for d in before:
        assert done[d["id"]] == d
    # requests in flight at the kill were asked at most once more; nothing else twice
    assert all(v <= at_kill.get(k, 0) + 1 for k, v in fake.attempts.items())
    assert sum(fake.after_success.values()) <= 4  # the concurrency
    assert manifest(tmp_path / "runs/default", "revise")["status"] == "finished"


# --------------------------------------------------------------------------- reverse
def web_args(url: str, *extra: str) -> list[str]:
    # web.min_quality=0: every page that passes the heuristics (the default reference classifier
    # keeps few of these pages; here the recipe, not the cut, is under test)
    return args(
        url, "plan.n=4", f"web.inputs=[{DOLMA0}]", "web.min_quality=0", "executor.workers=1", *extra
    )


def test_reverse_pairs_web_text_with_instructions_and_drops_unanswerable_ones(tmp_path):
    fake = RecipeOpenAI(script=faults)
    with ServerThread(fake) as srv:
        r = datagen(*web_args(srv.url, "stage=reverse", "reverse.n=12"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs/default"
    web = {d.id: d.text for d in read_shards(run / "web", Document)}
    pairs = read_jsonl(run / "reverse/pairs.jsonl")
    m = manifest(run, "reverse")
    assert m["sampled"] == 12 and len(pairs) == 12 and m["failed"] == 0
    kept = [p for p in pairs if p["drop_reason"] is None]
    dropped = [p for p in pairs if p["drop_reason"]]
    assert kept and dropped and m["pairs"] == len(kept)
    for p in pairs:
        assert p["text"] == web[p["source_id"]]  # the original text, unchanged
    for p in dropped:  # the fake's off-topic question shares no words with the text
        assert p["drop_reason"].startswith("not_answerable: overlap")
        assert p["overlap"] < 0.5 and "arctic terns" in p["instruction"]
    assert all(p["overlap"] >= 0.5 for p in kept)
    assert m["drop_reasons"] == {"not_answerable": len(dropped)}
    ds = datasets.load_dataset(
        "parquet", data_files=str(run / "reverse/pairs.parquet"), split="train"
    )
    assert ds.num_rows == len(kept)
    assert set(ds["instruction"]) == {p["instruction"] for p in kept}
    assert set(ds["response"]) == {p["text"] for p in kept}
    assert sum(fake.after_success.values()) == 0


def test_reverse_reads_a_jsonl_of_snippets_and_a_bad_line_is_one_clear_error(tmp_path):
    fake = RecipeOpenAI()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(OPENSTAX.read_text().splitlines()[3] + "\n{not json\n")
    with ServerThread(fake) as srv:
        r = datagen(
            *args(srv.url, "stage=reverse", f"reverse.input={OPENSTAX}", "reverse.n=5"),
            "web.inputs=[]",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        pairs = read_jsonl(tmp_path / "runs/default/reverse/pairs.jsonl")
        texts = {json.loads(line)["text"] for line in OPENSTAX.read_text().splitlines()}
        assert len(pairs) == 5 and all(p["text"] in texts for p in pairs)
        assert {p["origin"] for p in pairs} == {str(OPENSTAX)}
        r = datagen(
            *args(srv.url, "stage=reverse", f"reverse.input={bad}", "reverse.n=5"),
            "web.inputs=[]",
            "run.name=bad",
            cwd=tmp_path,
        )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"datagen: error: reverse.input: {bad}:2: not a JSON object" in r.stderr


def test_reverse_kill_9_then_rerun_pays_for_nothing_twice(tmp_path):
    fake = RecipeOpenAI(latency_s=0.1)
    with ServerThread(fake) as srv:
        r = datagen(*web_args(srv.url, "stage=web"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        base = web_args(srv.url, "stage=reverse", "reverse.n=14", "teacher.concurrency=2")
        out = tmp_path / "runs/default/reverse/pairs.jsonl"
        kill_midway(base, tmp_path, out, min_lines=3)
        before = read_jsonl(out)
        assert 3 <= len(before) < 14
        at_kill = dict(fake.attempts)
        r = datagen(*base, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    pairs = read_jsonl(out)
    assert len(pairs) == len({p["id"] for p in pairs}) == 14
    assert pairs[: len(before)] == before
    assert all(v <= at_kill.get(k, 0) + 1 for k, v in fake.attempts.items())
    assert sum(fake.after_success.values()) <= 2


# --------------------------------------------------------------------------- preferences
def test_preferences_rates_samples_into_pairs_loadable_with_datasets(tmp_path):
    fake = RecipeOpenAI(script=faults)
    with ServerThread(fake) as srv:
        r = datagen(
            *args(srv.url, "stage=preferences", "plan.n=20", "preferences.n=10"), cwd=tmp_path
        )
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "runs/default/preferences"
    records = read_jsonl(folder / "ratings.jsonl")
    m = manifest(tmp_path / "runs/default", "preferences")
    assert len(records) == m["prompts"] == 10 and m["pending"] == 0
    plan = {p["id"]: p for p in read_jsonl(tmp_path / "runs/default/plan/plan.jsonl")}
    pairs, ties = [], []
    for rec in records:
        assert rec["id"] in plan and len(rec["samples"]) == 4
        scores = [s["score"] for s in rec["samples"]]
        assert all(s is not None for s in scores)  # every fault was retried
        assert len({s["text"] for s in rec["samples"]}) > 1 or rec["skip_reason"]
        if rec["skip_reason"]:
            assert rec["skip_reason"].startswith("tie: all 4 rated samples scored")
            assert len(set(scores)) == 1
            ties.append(rec)
        else:
            assert (
                scores[rec["chosen"]] == max(scores) and scores.index(max(scores)) == rec["chosen"]
            )
            assert scores[rec["rejected"]] == min(scores)  # worst, the default
            pairs.append(rec)
    assert (
        pairs
        and m["pairs"] == len(pairs)
        and m["skip_reasons"] == ({"tie": len(ties)} if ties else {})
    )
    ds = datasets.load_dataset("parquet", data_files=str(folder / "pairs.parquet"), split="train")
    assert ds.num_rows == len(pairs)
    assert set(ds.column_names) >= {"prompt", "chosen", "rejected", "scores", "model", "id"}
    by_id = {rec["id"]: rec for rec in pairs}
    for row in ds:
        rec = by_id[row["id"]]
        assert row["chosen"] == rec["samples"][rec["chosen"]]["text"]
        assert row["rejected"] == rec["samples"][rec["rejected"]]["text"]
        assert row["score_chosen"] > row["score_rejected"] and row["model"] == "fake-model"
        assert row["scores"] == [s["score"] for s in rec["samples"]]
    card = (folder / "README.md").read_text()
    assert "data_files: pairs.parquet" in card and f"pairs: {len(pairs)}" in card
    # samples differ by their seed parameter: the same prompt is requested 4 times, each
    # sample's rating once; the rerun below asks nothing (every answer is cached)
    n = fake.total
    with ServerThread(fake) as srv:
        r = datagen(
            *args(srv.url, "stage=preferences", "plan.n=20", "preferences.n=10", "force=true"),
            cwd=tmp_path,
        )
    assert r.returncode == 0, r.stderr
    assert fake.total == n


def test_preferences_random_rejects_a_lower_rated_sample(tmp_path):
    fake = RecipeOpenAI()
    with ServerThread(fake) as srv:
        r = datagen(
            *args(srv.url, "stage=preferences", "plan.n=20", "preferences.n=12"),
            "preferences.rejected=random",
            cwd=tmp_path,
        )
    assert r.returncode == 0, r.stderr
    records = read_jsonl(tmp_path / "runs/default/preferences/ratings.jsonl")
    picked = [rec for rec in records if rec["rejected"] is not None]
    assert picked
    for rec in picked:
        scores = [s["score"] for s in rec["samples"]]
        assert scores[rec["rejected"]] < scores[rec["chosen"]] == max(scores)
    assert manifest(tmp_path / "runs/default", "preferences")["rejected_rule"] == "random"


def test_preferences_kill_9_then_rerun_pays_for_nothing_twice(tmp_path):
    fake = RecipeOpenAI(latency_s=0.05)
    with ServerThread(fake) as srv:
        base = args(
            srv.url, "stage=preferences", "plan.n=20", "preferences.n=10", "teacher.concurrency=2"
        )
        out = tmp_path / "runs/default/preferences/ratings.jsonl"
        kill_midway(base, tmp_path, out, min_lines=3)
        before = read_jsonl(out)
        assert 3 <= len(before) < 10
        killed_total = fake.total
        r = datagen(*base, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        resumed_total = fake.total
        clean = RecipeOpenAI()
        with ServerThread(clean) as srv2:
            r = datagen(
                *args(srv2.url, "stage=preferences", "plan.n=20", "preferences.n=10"),
                "run.name=clean",
                f"teacher.cache_dir={tmp_path / 'c2'}",
                cwd=tmp_path,
            )
            assert r.returncode == 0, r.stderr
    records = read_jsonl(out)
    assert len(records) == len({x["id"] for x in records}) == 10
    assert records[: len(before)] == before
    # the killed run and its rerun together asked for at most what one clean run asks, plus
    # the requests in flight at the kill (one per worker)
    assert resumed_total <= clean.total + 2
    assert killed_total < clean.total
    rerun = read_jsonl(tmp_path / "runs/clean/preferences/ratings.jsonl")
    strip = lambda rs: {x["id"]: (x["samples"], x["chosen"], x["rejected"]) for x in rs}  # noqa: E731
    assert strip(records) == strip(rerun)


def test_review_shows_each_stage_side_by_side(tmp_path):
    fake = RecipeOpenAI()
    with ServerThread(fake) as srv:
        r = datagen(
            *args(srv.url, "stage=revise", "plan.n=3", "revise.rounds=1"),
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        r = datagen(
            *args(srv.url, "stage=preferences", "plan.n=3", "preferences.n=3"), cwd=tmp_path
        )
        assert r.returncode == 0, r.stderr
    for stage in ("revise", "preferences"):
        r = datagen("review", f"stage={stage}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        page = (tmp_path / f"runs/default/review/{stage}.html").read_text()
        assert page.count('class="pair"') == 3
    page = (tmp_path / "runs/default/review/revise.html").read_text()
    docs = revise_docs(tmp_path / "runs/default")
    assert "draft critique" in page and "revision, round 1" in page
    from markupsafe import escape  # the page's own escaping (Jinja2 autoescape)

    for d in docs:
        assert str(escape(d["revision"]["draft"][:60])) in page


def test_revise_stops_at_the_budget_and_a_larger_one_continues_without_repaying(tmp_path):
    fake = RecipeOpenAI(completion_tokens=1000)
    price = "teacher.prices={fake-model: {input_per_mtok: 100, output_per_mtok: 100}}"
    with ServerThread(fake) as srv:
        base = args(srv.url, "stage=revise", "plan.n=8", "revise.rounds=2", price)
        r = datagen(*base, "budget.max_cost_usd=5", "stage=generate", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        spent = manifest(tmp_path / "runs/default", "generate")["run_spent_usd"]
        # room for a few of revise's requests (~$0.1 to $0.3 each at worst case) only
        r = datagen(*base, f"budget.max_cost_usd={spent + 0.8}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = manifest(tmp_path / "runs/default", "revise")
        assert m["status"] == "stopped: budget" and 0 < m["pending"] <= 8
        assert m["run_spent_usd"] <= spent + 0.8 and m["items"] + m["pending"] == 8
        r = datagen(*base, "budget.max_cost_usd=50", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = manifest(tmp_path / "runs/default", "revise")
        assert m["status"] == "finished" and m["items"] == 8 and m["pending"] == 0
        assert sum(fake.after_success.values()) == 0  # nothing paid twice
