"""Command line: thin wrappers over the public API.

    genmodels generate PATH --prompt TEXT [--max-new-tokens N --temperature T --top-k K --top-p P ...]
    genmodels chat PATH [--system TEXT] [--prompt TEXT] [sampling flags as generate's]
    genmodels convert SRC DST --to {hf,diffusers,genmodels,gguf} [--outtype f32|f16|q8_0|q4_0|q4_1]
    genmodels info PATH
    genmodels train CONFIG.yaml [--set key.sub=value ...]
    genmodels embed PATH TEXT...
    genmodels plan PRESET --gpus N [--seq L --batch B --zero fsdp|ddp --checkpointing --tokens T --mfu M --gpu G]
    genmodels arena SPEC.yaml [--out DIR] [--resume]
    genmodels tasks --out DIR [--seed 0 --per-task 100]          the task set (docs/tasks.md)
    genmodels eval-tasks PATH --split unseen|seen-test [--limit N --batch 16 --out REPORT.json]
    genmodels serve PATH [--host 127.0.0.1 --port 8000 --max-batch 16 --api-key KEY]   OpenAI API (docs/serve.md)
    genmodels tokenize-image PATH IMAGE [--recon OUT.png]     an image as an SPAE model's words (docs/spae.md)
    genmodels neurons PATH --out DIR [--lm smollm2 --top 20]   multimodal neurons of the LM (docs/spae.md)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_common import ArgumentParser, add_sampling_args, finite_float, model_dir, run_command, sampling_kwargs


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import genmodels
    from genmodels.cli_gist import gist_for
    from genmodels.generation.stop import StopStream, StopStrings
    from genmodels.registry import GENERATES, SEQ2SEQ, capabilities, require
    model = genmodels.load(model_dir(args.path))
    require(model, GENERATES, "`genmodels generate`", args.path)  # refuse before the prompt is echoed
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(f"{args.path} has no tokenizer.json, so a text prompt cannot be encoded")
    prompts = args.prompt or ["def "]
    texts = args.stop or []  # stop strings, matched on the text; one that is a single token also stops by id
    if "" in texts:
        raise ValueError("--stop '' is empty; give the text that ends generation (e.g. --stop $'\\n\\n')")
    stops = [i for i in (tok.token_to_id(s) for s in texts) if i is not None]
    kw = dict(sampling_kwargs(args), stop_tokens=stops)  # every argument before any echo, named as its flag
    gist = gist_for(args, model)  # --gist FILE: the prompts follow that compressed instruction
    encoded = [tok.encode(prompt).ids for prompt in prompts]
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise ValueError(f"--prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    cut = StopStrings(texts)  # the stop string and what follows are not printed
    for prompt, ids in zip(prompts, encoded):
        if args.num_beams > 1 and SEQ2SEQ not in capabilities(model):  # beams settle at the end: no streaming
            out = genmodels.generate(model, torch.tensor([ids]), **kw)
            print(prompt + cut.before(tok.decode(out[0, len(ids):].tolist())))
            continue
        if SEQ2SEQ in capabilities(model):  # the prompt is the source (after the gist, with --gist); print the target
            out = genmodels.generate(model, torch.tensor([ids]), cache=gist, **kw)
            print(cut.before(tok.decode(out[0].tolist(), skip_special_tokens=True)))
            continue
        sys.stdout.write(prompt)
        sys.stdout.flush()
        text = StopStream(tok, texts)  # never half a character, nothing of a stop string

        def stream(new: torch.Tensor) -> None:  # print each token as soon as its text is final
            sys.stdout.write(text.push(int(new[0])))
            sys.stdout.flush()

        genmodels.generate(model, torch.tensor([ids]), streamer=stream, stop=texts or None, cache=gist, **kw)
        sys.stdout.write(text.finish() + "\n")  # whatever was held back
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.interop.gguf_write import write_gguf
    if args.outtype is not None and args.to != "gguf":
        raise ValueError(f"--outtype applies to --to gguf only (got --to {args.to})")
    model = genmodels.load(model_dir(args.src))
    if args.to == "gguf":  # a model GGUF cannot hold is refused naming SRC (the writer knows no path)
        from genmodels.interop.base import ConversionError
        from genmodels.interop.gguf_write import check_writable
        try:
            check_writable(model)
        except ConversionError as e:
            raise ConversionError(f"SRC {args.src}: {e}") from None
    write = {"hf": genmodels.export_hf, "diffusers": genmodels.export_diffusers, "genmodels": genmodels.save,
             "gguf": lambda m, p, overwrite: write_gguf(m, p, args.outtype or "f32", overwrite)}[args.to]
    out = write(model, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.to} model to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.models.flops import count_parameters, flops_per_token
    from genmodels.registry import get_family, presets
    if not Path(args.path).exists() and args.path in presets():  # a preset: described without building it
        model, c = None, genmodels.preset(args.path)
    elif not Path(args.path).exists():
        raise FileNotFoundError(f"{args.path}: no such file or folder, nor a preset name (presets: "
                                f"{', '.join(sorted(presets()))})")
    else:
        model = genmodels.load(model_dir(args.path))
        c = model.config
    counts = get_family(c.family).counts  # FLOPs per token for families that declare them
    flops = ({f"context {t}": flops_per_token(c, t) for t in (1, c.max_seq_len)}
             if hasattr(counts, "matmul_parameters") else {})
    info = {"family": c.family, "parameters": counts.parameter_count(c) if model is None else count_parameters(model),
            "forward_flops_per_token": flops,
            "tokenizer": getattr(model, "tokenizer", None) is not None,
            "cpu_inference": "(a preset: no weights)" if model is None else _cpu_path(model), "config": c.to_dict()}
    if hasattr(counts, "forward_flops_per_image"):  # image families (diffusion): one image's forward pass
        info["forward_flops_per_image"] = counts.forward_flops_per_image(c)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"family      {c.family}  ({getattr(c, 'extra', {}).get('hf_architecture', 'genmodels')})")
    print(f"parameters  {info['parameters']:,}")
    for k, v in info["forward_flops_per_token"].items():
        print(f"FLOPs/token {v / 1e6:,.1f} M  (forward, {k})")
    if "forward_flops_per_image" in info:
        print(f"FLOPs/image {info['forward_flops_per_image'] / 1e6:,.1f} M  (forward)")
    if hasattr(counts, "describe"):  # a family's own layout line
        print(counts.describe(c))
    if isinstance(c, genmodels.ModelConfig):  # the transformer families' layout line
        print(f"layers {c.n_layers}  d_model {c.d_model}  heads {c.n_heads}/{c.kv_heads} kv  d_ff {c.d_ff}  "
              f"vocab {c.vocab_size}  positions {c.position}  norm {c.norm}  mlp {c.mlp}  tied {c.tie_embeddings}")
        if getattr(c, "n_experts", 0):  # sparse MoE (#11)
            from genmodels.models.flops import active_parameter_count
            print(f"experts {c.n_experts} (top-{c.experts_per_token}, width {c.expert_width}) in {c.n_moe_layers} "
                  f"layers  active parameters {active_parameter_count(c):,}")
    print(f"CPU inference  {info['cpu_inference']}")
    return 0


def _cpu_path(model) -> str:
    """Which path CPU generation / embedding takes for this model (genmodels.native or PyTorch)."""
    from genmodels.native import decoder, encoder
    from genmodels.registry import GENERATES, capabilities
    if GENERATES not in capabilities(model):  # encoders: the embed path
        reason, what = encoder.unsupported(model), "native encoder (embed)"
    else:
        reason, what = decoder.unsupported(model), "native decode step (generate)"
    return what if reason is None else f"PyTorch ({reason})"


def cmd_embed(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.registry import EMBEDS, require
    model = genmodels.load(model_dir(args.path))
    require(model, EMBEDS, "`genmodels embed`", args.path)
    vecs = genmodels.embed(model, args.texts)
    for text, v in zip(args.texts, vecs.tolist()):
        print(json.dumps({"text": text, "embedding": [round(x, 6) for x in v]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="genmodels", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="sample text from a model folder or training run")
    g.add_argument("path")
    g.add_argument("--prompt", action="append", help="prompt text (repeatable); default 'def '")
    add_sampling_args(g)
    g.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1 = none)")
    g.add_argument("--stop", action="append",
                   help="text that ends generation, not printed (repeatable; matched on the decoded text)")
    g.add_argument("--gist", metavar="FILE", help="a gist cache (`genmodels compress`): each prompt follows the "
                                                  "instruction compressed in it")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert between Hugging Face and genmodels folders (and to GGUF files)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", choices=("hf", "diffusers", "genmodels", "gguf"), required=True)
    c.add_argument("--outtype", choices=("f32", "f16", "q8_0", "q4_0", "q4_1"),
                   help="--to gguf: the 2-D weights' type (1-D tensors stay F32; default f32)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a model of another family or architecture already in DST (files that are "
                        "not model files are never replaced)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="family, parameter count, config, FLOPs per token")
    i.add_argument("path", help="a model folder, a training run, or a preset name (e.g. llama-tiny)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("embed", help="sentence embeddings from an encoder (e.g. all-MiniLM-L6-v2)")
    e.add_argument("path")
    e.add_argument("texts", nargs="+")
    e.set_defaults(func=cmd_embed)

    from .cli_train import add_train_parser  # a broken import is a bug to see, not a missing command
    add_train_parser(sub)
    from .cli_images import add_image_parsers
    add_image_parsers(sub, finite_float)
    from .cli_arena import add_arena_parser
    add_arena_parser(sub)
    from .cli_plan import add_plan_parser
    add_plan_parser(sub, finite_float)
    from .cli_chat import add_chat_parser
    add_chat_parser(sub)
    from .cli_tasks import add_tasks_parsers
    add_tasks_parsers(sub)
    from .cli_serve import add_serve_parser
    add_serve_parser(sub)
    from .cli_selfchat import add_selfchat_parser
    add_selfchat_parser(sub)
    from .cli_gist import add_compress_parser
    add_compress_parser(sub)
    from .cli_score import add_score_parser
    add_score_parser(sub)
    from .cli_critic import add_critic_parsers
    add_critic_parsers(sub)
    from .cli_perplexity import add_perplexity_parser
    add_perplexity_parser(sub)
    from .cli_spae import add_spae_parsers
    add_spae_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
