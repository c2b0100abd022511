"""Topic expansion (plan.topics.expand) against the fake server, which lists topics made of
real words (data/words.tsv) with the copies a teacher makes: the same title written
differently, a title with one more word, and the stock sections every list repeats. The fake
is for scale; the tree's dedup and determinism are what is tested."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from conftest import ROOT, datagen
from fake_openai import FakeOpenAI, ServerThread, request_key

WORDS = [ln.split("\t")[0] for ln in (ROOT / "data/words.tsv").read_text().splitlines()[1:]]
STOCK = ["Key terms", "Review questions", "Summary of the chapter"]  # in many lists


class TopicTeacher:
    """Answers a topics request with the number of titles it asks for (a JSON object under
    the schema); remembers each copy it made, to check that none survives."""

    def __init__(self) -> None:
        self.copies: set[str] = set()

    def __call__(self, body: dict) -> str:
        n = int(re.search(r"List (\d+)", body["messages"][-1]["content"]).group(1))
        rng = random.Random(request_key(body["messages"]))
        titles: list[str] = []
        for _ in range(n):
            r = rng.random()
            base = rng.choice(titles) if titles else ""
            if base in STOCK or base in self.copies:  # copies are made of originals
                base = ""
            if base and r < 0.06:  # the same topic, written differently
                b = base
                t = rng.choice([f"The {b.lower()}.", b.upper(), " ".join(b.split()[::-1])])
                self.copies.add(t)
            elif base and r < 0.12:  # one more word: Jaccard 4/5 with the original
                t = f"{base} {rng.choice(WORDS)}"
                self.copies.add(t)
            elif r < 0.17:
                t = rng.choice(STOCK)
            else:
                t = " ".join(rng.sample(WORDS, 4)).capitalize()
            titles.append(t)
        return json.dumps({"topics": titles})


def script(key: str) -> list[str]:
    return ["500"] if int(key, 16) % 9 == 0 else []


EXPAND = [
    "run",
    "stage=plan",
    "plan.topics.expand=true",
    "plan.topics.seeds=40",
    "plan.topics.per_subject=25",
    "plan.topics.per_topic=30",
    "plan.n=20000",
    "teacher.model=fake-model",
    "teacher.concurrency=16",
    "teacher.backoff_initial_s=0.05",
    "teacher.backoff_max_s=0.1",
]


def squash(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", title.lower())


def read_topics(plan: Path) -> list[tuple[str, str]]:
    rows = [ln.split("\t") for ln in (plan / "topics.tsv").read_text().splitlines()[1:]]
    return [(s, t) for s, t in rows]


def test_a_20000_topic_plan_from_expansion_has_no_duplicates_and_is_reproducible(tmp_path):
    teacher = TopicTeacher()
    fake = FakeOpenAI(script=script, answer=teacher)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with ServerThread(fake) as srv:
        r = datagen(*EXPAND, f"teacher.base_url={srv.url}", cwd=a)
        assert r.returncode == 0, r.stderr
        plan = a / "runs/default/plan"
        topics = [t for _, t in read_topics(plan)]
        assert len(topics) >= 20_000
        assert len(set(map(squash, topics))) == len(topics)  # no copy, however written
        assert not teacher.copies & set(topics), sorted(teacher.copies & set(topics))[:5]
        assert sum(t in STOCK for t in topics) <= len(STOCK)  # each stock section once
        m = json.loads((plan / "manifest.json").read_text())
        levels = m["topic_expansion"]["levels"]
        assert [lv["requests"] for lv in levels] == [40, levels[0]["kept"]]
        assert all(lv["duplicates_exact"] > 0 and lv["duplicates_near"] > 0 for lv in levels)
        assert m["topic_expansion"]["topics"] == len(topics) == m["combinations"]["topics"]
        items = [json.loads(x) for x in (plan / "plan.jsonl").read_text().splitlines()]
        assert len(items) == 20_000 == len({i["id"] for i in items})
        assert {i["topic"] for i in items} <= set(topics)
        tree = [json.loads(x)["path"] for x in (plan / "topic_tree.jsonl").read_text().splitlines()]
        assert [p[-1] for p in tree] == topics and all(len(p) == 4 for p in tree)
        sent = fake.total

        # elsewhere (no shared cache), the same seed gives the same plan byte for byte
        r = datagen(*EXPAND, f"teacher.base_url={srv.url}", cwd=b)
        assert r.returncode == 0, r.stderr
        for name in ("plan.jsonl", "topics.tsv", "topic_tree.jsonl"):
            assert (b / "runs/default/plan" / name).read_bytes() == (plan / name).read_bytes()
        assert fake.total > sent  # (its own cache: it asked again)
        sent = fake.total

        # a rerun that changes the plan (not the tree) pays nothing: every answer is cached
        r = datagen(*EXPAND, f"teacher.base_url={srv.url}", "plan.n=500", cwd=a)
        assert r.returncode == 0, r.stderr
        assert fake.total == sent
        assert [t for _, t in read_topics(plan)] == topics


def test_the_most_repeated_values_and_combinations_are_reported(tmp_path):
    r = datagen(
        "run",
        "stage=plan",
        "plan.n=300",
        "plan.words_per_prompt=0",
        "plan.word_pos=[noun,verb,adj]",
        "plan.formats=[textbook,exercises]",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    plan = tmp_path / "runs/default/plan"
    items = [json.loads(x) for x in (plan / "plan.jsonl").read_text().splitlines()]
    pos = {
        ln.split("\t")[0]: ln.split("\t")[2].split(",")
        for ln in (ROOT / "data/words.tsv").read_text().splitlines()[1:]
    }
    for it in items:  # one noun, one verb, one adjective, in that order
        assert [p in pos[w] for w, p in zip(it["words"], ["NOUN", "VERB", "ADJ"], strict=True)] == [
            True
        ] * 3
        assert bool(it["style"]) == (it["format"] == "textbook")  # exercises.j2 has no style
        assert not it["features"] or it["style"] == "story"
    m = json.loads((plan / "manifest.json").read_text())
    for axis in ("topic", "audience", "style", "word", "feature"):
        counted = Counter(
            v
            for it in items
            for v in (
                it["words"]
                if axis == "word"
                else it["features"]
                if axis == "feature"
                else [it[axis]]
                if it[axis]
                else []
            )
        )
        assert m["axes"][axis]["distinct"] == len(counted)
        top = m["axes"][axis]["most_repeated"]
        assert top[0][1] == max(counted.values()) and all(counted[v] == c for v, c in top)
    c = m["combinations"]
    assert c["drawn"] == 300 and c["styled_formats"] == ["textbook"]
    n_pos = [sum(p in ps for ps in pos.values()) for p in ("NOUN", "VERB", "ADJ")]
    topics = len((ROOT / "data/topics.tsv").read_text().splitlines()) - 1
    audiences = len((ROOT / "data/audiences.txt").read_text().splitlines())
    styles = m["axes"]["style"]["distinct"]  # all of them were drawn in 300 requests
    stories = 2 ** m["axes"]["feature"]["distinct"]  # each subset of the features
    forms = (styles - 1 + stories) + 1  # textbook: a style (a story: features); exercises
    assert c["available"] == topics * audiences * forms * n_pos[0] * n_pos[1] * n_pos[2]


def test_web_extracts_are_paired_with_a_topic_that_fits_or_one_derived_from_them(
    tmp_path, shared_data
):
    """The OpenStax Python modules as extracts: a module's own title is one of data/topics.tsv,
    so a fitting topic is often that title (chance: one in the number of topics)."""
    modules = (
        shared_data / "text/openstax_python/introduction-python-programming.modules_text.jsonl"
    )
    title_of = {}
    for line in modules.read_text().splitlines():
        m = json.loads(line)
        title_of[m["text"].strip()[:1500]] = m["title"]
    base = ["run", "stage=plan", "plan.n=400", f"plan.seed_texts={modules}", "plan.seed_fraction=1"]
    r = datagen(*base, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    items = [
        json.loads(x) for x in (tmp_path / "runs/default/plan/plan.jsonl").read_text().splitlines()
    ]
    assert all(it["seed_text"] and it["topic"] for it in items)
    own = sum(it["topic"] == title_of[it["seed_text"]] for it in items) / len(items)
    n_topics = len((ROOT / "data/topics.tsv").read_text().splitlines()) - 1
    assert own > 10 / n_topics, own  # drawn among the 5 that fit best: ~1 in 6 is its own

    r = datagen(*base, "plan.seed_topic=derive", "run.name=derive", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    items = [
        json.loads(x) for x in (tmp_path / "runs/derive/plan/plan.jsonl").read_text().splitlines()
    ]
    assert all(it["seed_text"] and it["topic"] == "" == it["subject"] for it in items)
    from pipeline.prompting import PromptLibrary
    from pipeline.records import PlanItem
    from pipeline.stages.generate import make_job

    prompts = PromptLibrary(ROOT / "prompts")
    for it in items[:20]:
        user = make_job(PlanItem.model_validate(it), prompts).messages[-1]["content"]
        assert "the extract below is about" in user and it["seed_text"] in user
        assert '""' not in user.split("\n")[0]  # no empty topic in quotes


def test_the_review_page_shows_output_diversity_per_format_and_style(tmp_path):
    from pipeline.config import load_config
    from pipeline.review import distinct_n, diversity_by_axis, opener, write_review

    fake = FakeOpenAI()  # answers echo the prompt: they differ as the requests do
    with ServerThread(fake) as srv:
        r = datagen(
            "run",
            "stage=generate",
            "plan.n=40",
            f"teacher.base_url={srv.url}",
            "teacher.model=fake-model",
            cwd=tmp_path,
        )
    assert r.returncode == 0, r.stderr
    outputs = [
        json.loads(x)
        for x in (tmp_path / "runs/default/generate/outputs.jsonl").read_text().splitlines()
    ]
    rows = diversity_by_axis(outputs)
    styles = Counter(o["style"] for o in outputs if o["style"])
    assert len(styles) > 1
    assert {r["value"]: r["docs"] for r in rows if r["axis"] == "style"} == dict(styles)
    formats = Counter(o["format"] for o in outputs)
    assert {r["value"]: r["docs"] for r in rows if r["axis"] == "format"} == dict(formats)
    for row in rows:
        texts = [o["text"] for o in outputs if o[row["axis"]] == row["value"]]
        assert row["d"] == [distinct_n(texts, n) for n in (1, 2, 3)]
        assert row["openers"][0][1] == max(Counter(map(opener, texts)).values())
    cfg = load_config([f"run.root={tmp_path / 'runs'}"])
    page = write_review(cfg, "generate").read_text()
    for value in [*styles, *formats]:
        assert f"<td>{value.replace('&', '&amp;')}</td>" in page


def test_dry_run_never_sends_topic_requests(tmp_path):
    fake = FakeOpenAI(answer=TopicTeacher())
    with ServerThread(fake) as srv:
        r = datagen(
            *EXPAND, f"teacher.base_url={srv.url}", "dry_run=true", "stage=generate", cwd=tmp_path
        )
    assert r.returncode != 0 and fake.total == 0
    assert "datagen: error: dry_run: plan.topics.expand sends 40 topic requests" in r.stderr
    assert "Traceback" not in r.stderr
