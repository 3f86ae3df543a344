"""Item 4: the ``transformers`` rollout backend's generation speed against plain ``generate``.

Same model (SmolLM2-135M-Instruct, CPU, fp32), same prompts (IntentionGym opening prompts
rendered with the chat template), same settings, timed alternately:

* **backend**: ``TransformersRollout.generate_blocking(GenerationRequest(...))``: left-padding,
  the seeded RNG context, ``model.generate``, cutting at the stop id and, when asked, the
  sampling log-probs (``compute_transition_scores``).
* **plain**: ``model.generate`` on the same left-padded batch with the same arguments
  (``output_scores`` only when the backend returns log-probs, so both do the same work).

The ratio is the median over alternating (plain, backend) pairs of backend / plain tokens/s.
Tokens/s counts generated tokens up to and including the first stop token, per sequence. Two
settings: greedy without log-probs (the two must produce identical tokens), and sampling at
temperature 1 with log-probs (what training rollouts do).

Usage::

    python -m benchmarks.bench_generation           # 4 prompts x 48 new tokens, 3 pairs per setting
    python -m benchmarks.bench_generation --quick   # a tiny random Llama, 2 prompts x 8 tokens
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import median, print_table, write_results


def load(quick: bool):
    from transformers import AutoTokenizer

    from userrl_core.models import resolve_model_path
    from userrl_plugins.backends.torch_policy import load_causal_lm

    folder = resolve_model_path("builtin:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not quick:
        return load_causal_lm(folder, dtype="float32", device=torch.device("cpu")).eval(), tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def dataset_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    from userrl_core.data import load_tasks
    from userrl_core.plugins import get_plugin_manager
    from userrl_plugins.intentiongym.tasks import DATA_DIR

    tasks = load_tasks(DATA_DIR / "userrl_splits" / "train.parquet", get_plugin_manager().registry,
                       max_tasks=count).tasks
    return [tokenizer.apply_chat_template(task.prompt, add_generation_prompt=True, tokenize=True,
                                          return_dict=False) for task in tasks]


def plain_generate(model: Any, prompts: list[list[int]], pad_id: int, stop_ids: list[int], *,
                   max_new_tokens: int, sample: bool, scores: bool, seed: int) -> int:
    """``model.generate`` as a user would call it; returns the generated token count."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    kwargs = {"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             do_sample=sample, eos_token_id=stop_ids, pad_token_id=pad_id,
                             return_dict_in_generate=True, output_scores=scores, use_cache=True, **kwargs)
        if scores:
            model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    return sum(_generated_length(row, stop_ids) for row in out.sequences[:, width:].tolist())


def _generated_length(ids: list[int], stop_ids: list[int]) -> int:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return position + 1
    return len(ids)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Generation: rollout backend vs plain generate (item 4).")
    parser.add_argument("--quick", action="store_true", help="smoke run on a tiny random model")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--pairs", type=int, default=3, help="timed (plain, backend) pairs per setting")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.pairs = 2, 8, 1

    from userrl_core.types import GenerationRequest
    from userrl_plugins.backends.transformers_backend import TransformersRollout

    model, tokenizer = load(args.quick)
    prompts = dataset_prompts(tokenizer, args.prompts)
    backend = TransformersRollout(model=model, tokenizer=tokenizer)
    stop_ids = sorted({tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id})
    pad_id = backend.pad_token_id

    rows, records = [], []
    for setting, sample in (("greedy, no log-probs", False), ("sampling T=1, log-probs", True)):
        request = GenerationRequest(prompts=prompts, max_new_tokens=args.max_new_tokens, temperature=1.0,
                                    top_p=1.0, do_sample=sample, stop_token_ids=stop_ids, seed=1234,
                                    return_logprobs=sample)

        def run_backend() -> tuple[float, int, list[list[int]]]:
            started = time.perf_counter()
            result = backend.generate_blocking(request)
            return time.perf_counter() - started, sum(len(ids) for ids in result.token_ids), result.token_ids

        def run_plain() -> tuple[float, int]:
            started = time.perf_counter()
            count = plain_generate(model, prompts, pad_id, stop_ids, max_new_tokens=args.max_new_tokens,
                                   sample=sample, scores=sample, seed=1234)
            return time.perf_counter() - started, count

        run_plain(), run_backend()  # warm-up
        plain_rates, backend_rates, counts = [], [], set()
        for _ in range(args.pairs):
            seconds, count = run_plain()
            plain_rates.append(count / seconds)
            seconds_b, count_b, ids = run_backend()
            backend_rates.append(count_b / seconds_b)
            counts.add((count, count_b))
        if not sample and any(p != b for p, b in counts):
            raise AssertionError(f"greedy token counts differ between plain generate and the backend: {counts}")
        pair_ratios = [b / p for b, p in zip(backend_rates, plain_rates)]
        ratio = median(pair_ratios)  # median over alternating pairs: robust to load bursts
        records.append({"setting": setting, "plain_tokens_per_s": plain_rates, "backend_tokens_per_s": backend_rates,
                        "token_counts_plain_backend": sorted(counts), "pair_ratios": pair_ratios, "ratio": ratio,
                        "ratio_of_medians": median(backend_rates) / median(plain_rates)})
        rows.append([setting, median(plain_rates), median(backend_rates), ratio])

    print_table(
        f"Generation: {args.prompts} prompts x up to {args.max_new_tokens} new tokens, CPU fp32, "
        f"{args.pairs} alternating pairs, threads={torch.get_num_threads()}",
        ["setting", "plain generate tok/s", "backend tok/s", "backend / plain (median of pairs)"], rows,
    )
    worst = min(r["ratio"] for r in records)
    payload = {"settings": vars(args), "results": records,
               "goal": {"ratio_at_least": 0.95, "worst_ratio": worst, "met": worst >= 0.95}}
    path = write_results("bench_generation", payload)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
