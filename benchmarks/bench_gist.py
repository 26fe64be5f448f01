"""#24 d4: the gist reproduction on the task set (Mu, Li, Goodman 2023, arXiv 2304.08467, table 1's comparison).

Each condition — ``pos_control``, ``gist`` with k = 1, 2, 5, 10, ``neg_control`` — fine-tunes the same start
(SmolLM2-135M-Instruct with LoRA, or our span-pre-trained T5) for the same fixed number of steps and seed on the
task set's seen-train split laid out instruction → <GIST>×k → input → output, then scores held-out exact match
on seen-test and unseen, decoding after the condition's cache (``genmodels.compress(mode=)``, which equals the
full masked forward). Every condition is one bounded-work command (fixed steps, one thread), so the set can be
widened a seed at a time:

    python benchmarks/bench_gist.py prepare --tasks TASKS --out OUT            # data, tokenizers (once)
        [--more-seed 1 2 3 4]   # more training instances of the same tasks (never a held-out one)
    nice -n 10 python benchmarks/bench_gist.py run --out OUT --mask gist --k 1 --seed 0 --steps 150
    python benchmarks/bench_gist.py cost --out OUT                             # KV bytes, FLOPs, wall-clock
    python benchmarks/bench_gist.py report --out OUT --png docs/img/gist-smollm2.png

The instruction of an instance is its task template with the slots left as names ("Reverse the word '{word}'.
Reply with the reversed word only."); the input is the slot values ("word: pencil"). So instructions are the
task set's own (frozen in #18) and a task's instances share its few instructions, as in the paper's Alpaca+.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import genmodels  # noqa: E402
from genmodels.data.gist_examples import GIST_TOKEN, add_gist_token, gist_record  # noqa: E402
from genmodels.data.task_kinds import KINDS  # noqa: E402
from genmodels.data.tasks import exact_match  # noqa: E402
from bench_chat import smollm2_file  # noqa: E402  (one definition)

CONDITIONS = [("pos_control", 1), ("gist", 1), ("gist", 2), ("gist", 5), ("gist", 10), ("neg_control", 1)]
SPLITS = ("seen-test", "unseen")


def split_instance(meta: dict) -> tuple[str, str]:
    """``(instruction, input)`` of a task instance: its template with the slots as names, and the values."""
    template = KINDS[meta["task"]].templates[meta["template"]]
    values = meta["values"]
    instruction = template.format(**{name: "{" + name + "}" for name in values})
    return instruction, "\n".join(f"{name}: {value}" for name, value in values.items())


def read_split(tasks: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (tasks / f"{split}.meta.jsonl").read_text().splitlines() if line.strip()]


def more_train(tasks: Path, seeds: list[int], per_task: int) -> list[dict]:
    """Seen-task instances drawn by the set's own generator at other seeds (``build_taskset(seed, per_task)``,
    every split of it), less any whose ``(task, values)`` is in the frozen set at ``tasks`` or drawn already:
    more distinct training instances of the same tasks and phrasings, never a held-out one."""
    from genmodels.data.tasks import SEEN_TASKS, build_taskset

    def key(task: str, values: dict) -> str:
        return task + json.dumps(values, sort_keys=True)
    taken = {key(m["task"], m["values"])
             for split in ("seen-train", "seen-val", "seen-test") for m in read_split(tasks, split)}
    out = []
    for seed in seeds:
        for r in build_taskset(seed=seed, per_task=per_task):
            if r.task in SEEN_TASKS and key(r.task, r.values) not in taken:
                taken.add(key(r.task, r.values))
                out.append({**r.meta(), "split": "seen-train"})
    if seeds:
        print(f"--more-seed {' '.join(map(str, seeds))}: {len(out)} more training instances (up to {per_task} a "
              "task and seed; the frozen set's and repeats left out)")
    return out


def prepare(args) -> None:
    """OUT/data/k{k}.jsonl (seen-train as gist records), OUT/tok (the start's tokenizer + <GIST>), OUT/eval.json."""
    from genmodels.data import load_tokenizer, save_tokenizer
    out = Path(args.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train = read_split(Path(args.tasks), "seen-train")
    train += more_train(Path(args.tasks), args.more_seed, args.more_per_task)
    for k in sorted({k for _, k in CONDITIONS}):
        rows = [gist_record(*split_instance(m), m["answer"], k) for m in train]
        (out / "data" / f"k{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = args.start or str(smollm2_file())
    tok = add_gist_token(load_tokenizer(start))
    save_tokenizer(tok, out / "tok")
    if args.grow:  # the start with <GIST> grown in (its mean row) as a folder: a LoRA run's adapters load onto it
        from genmodels.models.vocab import grow_vocab
        model = genmodels.load(start)
        model = grow_vocab(model, tok.get_vocab_size() - model.config.vocab_size)
        start = str(genmodels.save(model, out / "base", tok))
    evals = {s: [{"instruction": split_instance(m)[0], "input": split_instance(m)[1], "answer": m["answer"],
                  "task": m["task"]} for m in read_split(Path(args.tasks), s)] for s in SPLITS}
    (out / "eval.json").write_text(json.dumps({"start": start, "splits": evals}))
    print(f"wrote {out}/data (k = {sorted({k for _, k in CONDITIONS})}), {out}/tok, {out}/eval.json; start {start}")


def condition_name(mask: str, k: int, seed: int, steps: int) -> str:
    return f"{mask}-k{k}-s{seed}-n{steps}"


def recipe(out: Path, mask: str, k: int, seed: int, steps: int, args) -> dict:
    """The run of one condition: everything equal but the mask and k."""
    start = json.loads((out / "eval.json").read_text())["start"]
    return {"model": {"init_from": start},
            "data": {"kind": "examples", "path": str(out / "data" / f"k{k}.jsonl"), "tokenizer": str(out / "tok"),
                     "seq_len": args.seq_len, "val_fraction": 0.02},
            "train": {"objective": {"name": "gist", "k": k, "mask": mask}, "batch_size": args.batch,
                      "lora": {"targets": args.lora, "r": 8, "alpha": 16,  # (auto: the <GIST> row trains too)
                               "trainable_tokens": "auto" if getattr(args, "gist_row", "train") == "train" else []}
                      if args.lora else None,
                      "lr": args.lr, "min_lr": args.lr / 10, "warmup_steps": args.warmup, "max_steps": steps,
                      "precision": args.precision,
                      "max_minutes": None, "weight_decay": 0.0, "seed": seed, "threads": args.threads,
                      "eval_every": steps, "eval_batches": 1, "ckpt_every": steps, "keep_last": 1,
                      "mfu_peak_tflops": 0.1},
            "sample": {"prompts": []}, "run_dir": str(out / "runs" / condition_name(mask, k, seed, steps))}


def prompt_parts(instruction: str, input: str, k: int) -> tuple[str, str]:
    """What compress takes and what follows the gist, cut from :func:`gist_record`'s prompt at the gist."""
    prompt = gist_record(instruction, input, "", k)["prompt"]
    head, tail = prompt.split(GIST_TOKEN * k)
    return head, tail


def pad(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` ``(B, W)`` of id lists, left-padded (decoders) or right-padded (encoder–decoders)."""
    width = max(len(r) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    am = torch.zeros_like(x)
    for i, r in enumerate(rows):
        at = slice(width - len(r), width) if left else slice(0, len(r))
        x[i, at], am[i, at] = torch.tensor(r), 1
    return x, am


def replies(model, chunk: list[dict], mask: str, k: int, new_tokens: int, eos: list[int]) -> list[list[int]]:
    """The greedy reply ids of each row, decoded after its ``compress(mode=mask)`` cache. An encoder–decoder's
    pos_control has no cache (its instruction's encoder states read the input): the whole prompt is its source,
    nothing hidden — what pos_control trained on."""
    from genmodels.registry import SEQ2SEQ, capabilities
    tok = model.tokenizer
    parts = [prompt_parts(r["instruction"], r["input"], k) for r in chunk]
    if SEQ2SEQ not in capabilities(model):  # decoder: the input after the gist, left-padded; out = input + new
        gist = genmodels.compress(model, [h for h, _ in parts], k=k, mode=mask)
        x, am = pad([tok.encode(t).ids for _, t in parts], left=True)
        out = genmodels.generate(model, x, new_tokens, cache=gist, attention_mask=am, stop_tokens=eos)
        return out[:, x.shape[1]:].tolist()
    if mask == "pos_control":
        x, am = pad([tok.encode(h + GIST_TOKEN * k + t).ids for h, t in parts], left=False)
        out = genmodels.generate(model, x, new_tokens, attention_mask=am, stop_tokens=eos)
    else:  # out = the start token + new
        gist = genmodels.compress(model, [h for h, _ in parts], k=k, mode=mask)
        x, am = pad([tok.encode(t).ids for _, t in parts], left=False)
        out = genmodels.generate(model, x, new_tokens, cache=gist, attention_mask=am, stop_tokens=eos)
    return out[:, 1:].tolist()


@torch.inference_mode()
def score(model, rows: list[dict], mask: str, k: int, batch: int = 16, new_tokens: int = 24) -> dict:
    """Exact match of greedy replies decoded after each row's ``compress(mode=mask)`` cache, batched (rows of
    different instructions and input lengths together)."""
    tok = model.tokenizer
    ends = (model.config.eos_token_id, *(tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>", "</s>", "Ċ")))
    eos = sorted({i for i in ends if i is not None})  # the examples kind ends a response with the tokenizer's own
    right, per_task, samples = 0, {}, []
    for lo in range(0, len(rows), batch):
        chunk = rows[lo:lo + batch]
        for r, o in zip(chunk, replies(model, chunk, mask, k, new_tokens, eos)):
            o = o[:next((j for j, i in enumerate(o) if i in eos), len(o))]  # up to the first end token
            reply = tok.decode(o).split("\n")[0]
            ok = exact_match(reply, r["answer"])
            if len(samples) < 6:
                samples.append({"task": r["task"], "reply": reply, "answer": r["answer"]})
            right += ok
            t = per_task.setdefault(r["task"], [0, 0])
            t[0], t[1] = t[0] + ok, t[1] + 1
    return {"exact_match": right / len(rows), "n": len(rows), "per_task": per_task, "samples": samples}


def swapped(rows: list[dict]) -> list[dict]:
    """Each row with the instruction of another task's row (row ``i`` takes the first row from ``i + n/2`` on,
    cyclically, whose task differs): the probe of whether a condition's replies read the instruction at all."""
    n = len(rows)
    def other(i: int) -> dict:
        return next(rows[j % n] for j in range(i + n // 2, i + n // 2 + n) if rows[j % n]["task"] != rows[i]["task"])
    return [{**r, "instruction": other(i)["instruction"]} for i, r in enumerate(rows)]


def run(args) -> None:
    """Train one condition (skipped when its final/ exists) and score it: OUT/results/<name>.json; with
    ``--swap``, score it on every row with another task's instruction instead: OUT/probes/<name>.json."""
    from genmodels.training import RunConfig, train
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not (out / "eval.json").exists():
        raise SystemExit(f"error: {out}/eval.json: no prepared data there; run `bench_gist.py prepare --out {out}` first")
    name = condition_name(args.mask, args.k, args.seed, args.steps)
    final = out / "runs" / name / "final"
    t0 = time.perf_counter()
    if not final.exists():
        train(RunConfig.from_dict(recipe(out, args.mask, args.k, args.seed, args.steps, args)), progress=False,
              log=lambda s: print(s, flush=True))
    trained = time.perf_counter() - t0
    model = genmodels.load(final).eval()
    evals = json.loads((out / "eval.json").read_text())["splits"]
    result = {"mask": args.mask, "k": args.k, "seed": args.seed, "steps": args.steps, "train_s": round(trained, 1),
              "stride": args.stride, "limit": args.limit,
              "batch": args.batch, "lora": args.lora, "lr": args.lr, "precision": args.precision,
              "gist_row": args.gist_row if args.lora else "train"}
    for split in SPLITS:
        rows = evals[split][::args.stride][:args.limit or None]
        result[split] = score(model, swapped(rows) if args.swap else rows, args.mask, args.k)
        print(f"{name} {split}{' (instructions swapped)' if args.swap else ''}: exact match "
              f"{result[split]['exact_match']:.3f} (n={result[split]['n']})", flush=True)
    where = out / ("probes" if args.swap else "results")
    where.mkdir(exist_ok=True)
    (where / f"{name}.json").write_text(json.dumps({**result, "swap": args.swap}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--tasks", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--start", default=None, help="model.init_from (default: the SmolLM2 GGUF)")
    a.add_argument("--no-grow", dest="grow", action="store_false",
                   help="train from --start itself (each run grows <GIST>; not for LoRA: its adapters need the grown base)")
    a.add_argument("--more-seed", type=int, nargs="*", default=[],
                   help="add the seen tasks' instances the set's generator draws at these seeds (not the frozen "
                        "set's own; held-out instances left out) to the training data")
    a.add_argument("--more-per-task", type=int, default=200, help="--more-seed: instances per seen task")
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--mask", choices=["gist", "pos_control", "neg_control"], required=True)
    r.add_argument("--k", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=150)
    r.add_argument("--batch", type=int, default=4)
    r.add_argument("--seq-len", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--lora", default="all-linear", help="LoRA targets ('' for full tuning)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="train.precision (bf16: autocast, on a CPU with AVX512-BF16 or AMX); scoring runs in fp32")
    r.add_argument("--warmup", type=int, default=5, help="train.warmup_steps")
    r.add_argument("--limit", type=int, default=0, help="score only the first N rows of each split (0: all)")
    r.add_argument("--stride", type=int, default=1, help="score every Nth row of each split (1: all)")
    r.add_argument("--gist-row", choices=["train", "frozen"], default="train",
                   help="LoRA: train the <GIST> embedding row (train.lora.trainable_tokens: auto) or keep it frozen "
                        "as the vocabulary mean it was grown as ([]: the runs before the trainable rows)")
    r.add_argument("--swap", action="store_true",
                   help="score with each row's instruction taken from another task's row (OUT/probes/, not results/)")
    c = sub.add_parser("cost")
    c.add_argument("--out", required=True)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--run", default=None, help="a run's final/ to time (default: the start)")
    c.add_argument("--new-tokens", type=int, default=8)
    c.add_argument("--repeats", type=int, default=3)
    q = sub.add_parser("report")
    q.add_argument("--out", required=True, nargs="+", help="one folder per start model (its results/)")
    q.add_argument("--labels", nargs="+", default=None, help="a name per --out folder (default: the folder names)")
    q.add_argument("--png", default=None)
    q.add_argument("--title", default="gist on the task set")
    args = p.parse_args()
    if args.cmd == "cost":
        from bench_gist_cost import cost
        cost(args)
    elif args.cmd == "report":
        from bench_gist_report import report
        report(args)
    else:
        {"prepare": prepare, "run": run}[args.cmd](args)


if __name__ == "__main__":
    main()
