"""GPU check (not a pytest test): rrtool's CUDA and bf16 paths, run on a machine with a GPU.

CI has no GPU, so this script is what checks the code paths only a GPU takes: weights in
bf16 (``model.dtype: auto`` on CUDA), tensors placed on the model's device, LoRA training and
merging against bf16 weights with fp32 master copies, soft-prompt decoding on CUDA. Run:

    python tests/gpu_check.py --out DIR [--device cuda] [--smollm2-shape DIR]
        [--quick | --only CHECK ...]

Every check runs even when an earlier one failed; ``DIR/gpu_check.json`` records each one's
outcome (``ok``, seconds, numbers, or the traceback), ``DIR/*.log`` the CLI runs' output.

1. ``generation``: the built-in tiny model on DEVICE, fp32: batched left-padded greedy
   decoding equals one-prompt-at-a-time decoding token for token; bf16: decoding, sampling
   with n > 1 and decoding from soft prompts (``inputs_embeds``) run and give finite features.
2. ``run:<strategy>``: ``rrtool run`` on the tiny spec (Reveal, Release, Audit, MLflow store)
   with ``model.device=DEVICE`` and dtype ``auto`` for the Release strategies that train
   differently (iterative, dpo, npo, ext_sub), then ``rrtool audit --report html``.
3. ``run:neuralucb``: the instruction search (soft prompts, last-token features, the MLP
   surrogate) on DEVICE, with a tiny random sentence-transformers embedder built here (the
   MiniLM package is too large to ship to a device machine).
4. ``throughput`` (with ``--smollm2-shape``, a directory holding SmolLM2-135M's config and
   tokenizer): that architecture with random weights (same FLOPs per token; the text is
   meaningless, so only speed is measured) in bf16 through the HF backend: one prompt at a
   time, then batches of 64 and 256, greedy, 128 new tokens, tokens/s; then milliseconds per
   decoding step of transformers' own ``generate`` against rrtool's backend (greedy, sampled),
   and a profile of rrtool's sampled decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import FAST_SETS, only_run, set_flags, tiny_spec  # noqa: E402

RESULTS: dict[str, Any] = {}


def check(name: str, out: Path) -> Callable[[Callable[[], dict[str, Any]]], None]:
    """Run the decorated function now; record its numbers or its traceback under ``name``."""

    def run(fn: Callable[[], dict[str, Any]]) -> None:
        began = time.perf_counter()
        try:
            numbers = fn()
            RESULTS[name] = {"ok": True, **numbers}
        except Exception:  # every failure is recorded; the next check still runs
            RESULTS[name] = {"ok": False, "error": traceback.format_exc()[-4000:]}
        RESULTS[name]["seconds"] = round(time.perf_counter() - began, 2)
        print(f"[{'ok' if RESULTS[name]['ok'] else 'FAILED'}] {name}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2))

    return run


def rrtool(args: list[str], cwd: Path, log: Path) -> None:
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rrtool", *args], cwd=cwd, capture_output=True, text=True
    )
    with log.open("a") as fh:
        fh.write(f"$ rrtool {' '.join(args)}  (exit {proc.returncode}, ")
        fh.write(f"{time.perf_counter() - began:.1f} s)\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"rrtool {args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")


def generation_check(device: str) -> dict[str, Any]:
    import torch

    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator
    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    prompts = [
        "The city council met on Tuesday to",
        "Ada Lovelace",
        "What describes person in the text? The answer is a list of names and",
        "London",
    ]
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    fp32 = load_model(ModelSpec(id="builtin:tiny-random", device=device, dtype="float32"))
    batched = make_generator("hf", fp32, batch_size=4).generate(prompts, greedy, chat=False)
    single = make_generator("hf", fp32, batch_size=1).generate(prompts, greedy, chat=False)
    if [c[0].text for c in batched] != [c[0].text for c in single]:
        raise AssertionError(f"batched {batched} != one at a time {single}")

    bf16 = load_model(ModelSpec(id="builtin:tiny-random", device=device))  # auto dtype
    weight = bf16.model.get_input_embeddings().weight
    gen = make_generator("hf", bf16, batch_size=4)
    sampled = gen.generate(
        prompts, SamplingParams(max_new_tokens=8, num_samples=3, seed=0), chat=True
    )
    if [len(c) for c in sampled] != [3] * len(prompts):
        raise AssertionError(f"expected 3 samples per prompt, got {[len(c) for c in sampled]}")
    prefix = torch.randn(3, weight.shape[1], device=weight.device, dtype=weight.dtype)
    from_embeds = gen.generate_from_embeds(prefix, ["Ada", "London"], greedy)
    features = gen.last_token_features(["Ada", "London"], prefix_embeds=prefix)
    if not torch.isfinite(features).all():
        raise AssertionError("non-finite last-token features from soft prompts")
    return {
        "device": str(weight.device),
        "auto_dtype": str(weight.dtype),
        "greedy_batched_equals_single_fp32": True,
        "soft_prompt_completions": [c[0].text for c in from_embeds],
    }


def pipeline_check(workdir: Path, out: Path, device: str, name: str, sets: list[str]) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(name=f"gpu-{name}"), sort_keys=False))
    log = out / f"run_{name}.log"
    overrides = set_flags(*FAST_SETS, f"model.device={device}", *sets)
    rrtool(["run", str(spec), *overrides], workdir, log)
    rrtool(["audit", "--report", "html", "--out", "report.html"], workdir, log)
    client, run = only_run(workdir)
    model = json.loads(Path(client.download_artifacts(run.info.run_id, "model.json")).read_text())
    wanted = ("phase/", "reveal/", "release/", "audit/forget/macro_f1", "audit/utility/macro_f1")
    metrics = {k: round(v, 4) for k, v in run.data.metrics.items() if k.startswith(wanted)}
    return {
        "status": run.info.status,
        "model": {k: model[k] for k in ("device", "dtype", "parameters")},
        "report_bytes": (workdir / "report.html").stat().st_size,
        "metrics": dict(sorted(metrics.items())),
    }


def tiny_embedder(directory: Path) -> Path:
    """A sentence-transformers model over the tiny random Llama (mean pooling): the search
    only needs *an* embedder that runs on the device."""
    from sentence_transformers import SentenceTransformer, models

    from rrtool.models import ensure_tiny_random_checkpoint

    body = models.Transformer(str(ensure_tiny_random_checkpoint()))
    pooling = models.Pooling(body.get_word_embedding_dimension(), "mean")
    SentenceTransformer(modules=[body, pooling]).save(str(directory))
    return directory


def throughput_check(shape: Path, device: str, scratch: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator
    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    checkpoint = scratch / "smollm2-shape-random"
    config = AutoConfig.from_pretrained(shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(shape).save_pretrained(checkpoint)
    handle = load_model(ModelSpec(id=str(checkpoint), device=device, dtype="bfloat16"))
    starts = ["The city council met on Tuesday to discuss", "Once upon a time", "In 1843,"]
    # Greedy: random weights give near-flat distributions, whose top-p nucleus is far wider
    # than a trained model's (the sampler's worst case); per_step_costs times sampling.
    params = SamplingParams(max_new_tokens=128, temperature=0.0)
    cuda = device.startswith("cuda")
    rows: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if cuda:
        rows["gpu"] = torch.cuda.get_device_name()

    def sync() -> None:
        if cuda:  # kernels run asynchronously: time only finished work
            torch.cuda.synchronize()

    # Warm-up: CUDA context, kernels' first launch.
    make_generator("hf", handle, batch_size=8).generate(starts, params, chat=False)
    for label, batch, count in (("loop", 1, 2), ("batch 64", 64, 64), ("batch 256", 256, 256)):
        prompts = [starts[i % len(starts)] for i in range(count)]
        gen = make_generator("hf", handle, batch_size=batch)
        sync()
        began = time.perf_counter()
        done = gen.generate(prompts, params, chat=False)
        sync()
        seconds = time.perf_counter() - began
        tokens = sum(c.tokens for completions in done for c in completions)
        rows[label] = {"tokens": tokens, "seconds": round(seconds, 2)}
        rows[label]["tokens_per_s"] = round(tokens / seconds, 1)
    rows["per_step_ms"] = per_step_costs(handle, starts[0], sync)
    return rows


def per_step_costs(handle: Any, start: str, sync: Callable[[], None]) -> dict[str, Any]:
    """Milliseconds per decoding step at batch 1 and 64, for transformers' own ``generate``
    (no rrtool code) and for rrtool's backend greedy and sampled, then a profile of rrtool's
    sampled decoding: says whether time goes to the model or to rrtool's per-step code."""
    import torch

    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator

    steps = 32
    ids = handle.tokenizer(start, return_tensors="pt").input_ids.to(handle.model.device)

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        began = time.perf_counter()
        fn()
        sync()
        return round((time.perf_counter() - began) * 1000 / steps, 2)

    greedy = SamplingParams(max_new_tokens=steps, temperature=0.0)
    sampled = SamplingParams(max_new_tokens=steps, temperature=1.0, seed=0)
    nucleus = SamplingParams(max_new_tokens=steps, temperature=1.0, top_p=0.9, seed=0)

    def row(batch: int) -> dict[str, float]:
        rows = ids.repeat(batch, 1)
        kw = {"max_new_tokens": steps, "min_new_tokens": steps, "do_sample": False}

        def plain() -> Any:
            return handle.model.generate(rows, **kw, pad_token_id=0)

        plain()  # warm-up
        gen = make_generator("hf", handle, batch_size=batch)
        prompts = [start] * batch
        return {
            "transformers generate, greedy": timed(plain),
            "rrtool greedy": timed(lambda: gen.generate(prompts, greedy, chat=False)),
            "rrtool sampled": timed(lambda: gen.generate(prompts, sampled, chat=False)),
            "rrtool sampled top-p 0.9 (flat: worst case)": timed(
                lambda: gen.generate(prompts, nucleus, chat=False)
            ),
        }

    out = {f"batch {batch}": row(batch) for batch in (1, 64)}
    gen = make_generator("hf", handle, batch_size=64)
    with torch.profiler.profile() as prof:
        gen.generate([start] * 64, sampled, chat=False)
    out["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smollm2-shape", type=Path, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="one `rrtool run` (iterative) and the speed rows"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="CHECK", help="run just these checks (e.g. run:neuralucb)"
    )
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/rrtool-gpu-check"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RRTOOL_CACHE_DIR", str(args.scratch / "cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"

    def neuralucb() -> dict[str, Any]:
        embedder = tiny_embedder(args.scratch / "embedder")
        sets = [
            "reveal.strategy=neuralucb",
            f"reveal.embedding_model={embedder}",
            "reveal.outer_iterations=1",
            "reveal.inner_iterations=2",
        ]
        return pipeline_check(args.scratch / "neuralucb", args.out, args.device, "neuralucb", sets)

    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "generation": lambda: generation_check(args.device)
    }
    for strategy in ("iterative", "dpo", "npo", "ext_sub"):
        checks[f"run:{strategy}"] = lambda s=strategy: pipeline_check(
            args.scratch / s, args.out, args.device, s, [f"release.strategy={s}"]
        )
    checks["run:neuralucb"] = neuralucb
    if args.smollm2_shape is not None:
        checks["throughput"] = lambda: throughput_check(
            args.smollm2_shape, args.device, args.scratch
        )
    unknown = sorted(set(args.only or ()) - set(checks))
    if unknown:
        parser.error(f"--only: unknown check(s) {unknown}; known: {sorted(checks)}")
    for name, fn in checks.items():
        if args.only:
            if name not in args.only:
                continue
        elif args.quick and name not in ("run:iterative", "throughput"):
            continue
        check(name, args.out)(fn)
    failed = [name for name, result in RESULTS.items() if not result["ok"]]
    print(json.dumps(RESULTS, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
