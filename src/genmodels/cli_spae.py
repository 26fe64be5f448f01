"""SPAE's commands (docs/spae.md): an image as a pyramid of a frozen LM's words; the LM's multimodal neurons.

    genmodels tokenize-image PATH IMAGE [--recon OUT.png]
    genmodels neurons PATH --out DIR [--lm smollm2] [--top 20] [--words 20] [--images 360]

``PATH``: an SPAE model folder or run; ``IMAGE``: a picture file (grey or RGB, resized to the model's size; light
ink on dark, like the digits). Prints one line per pyramid layer, ``<layer> (<g>×<g>): word word …`` (row-major);
``--recon``: one PNG with the image and its reconstruction from each depth (1, 1–2, …, all layers).

``neurons``: the digits' validation images (scikit-learn, offline) written in ``PATH``'s words and read by the LM
(``--lm``: the installed ``smollm2``, or a .gguf / model folder: the LM whose words the codebook holds); the
``--top`` most class-selective MLP neurons with the ``--words`` tokens each promotes (genmodels.neurons), printed
and written to DIR/neurons.tsv, their top images to DIR/neurons.png.
"""
from __future__ import annotations

import argparse


def add_spae_parsers(sub) -> None:
    t = sub.add_parser("tokenize-image", help="an image as a pyramid of an SPAE model's words")
    t.add_argument("path", help="an SPAE model folder or training run")
    t.add_argument("image", help="an image file (PNG, JPEG, …)")
    t.add_argument("--recon", default=None, help="write the image and its reconstruction at each depth to this PNG")
    t.set_defaults(func=cmd_tokenize_image)
    n = sub.add_parser("neurons", help="MLP neurons of a frozen LM that fire for digit classes read as SPAE words")
    n.add_argument("path", help="an SPAE model folder or training run (trained on the digits)")
    n.add_argument("--out", required=True, help="folder for neurons.tsv and neurons.png")
    n.add_argument("--lm", default="smollm2", help="the LM whose words the codebook holds (default: smollm2)")
    n.add_argument("--top", type=int, default=20, help="neurons to report (default 20)")
    n.add_argument("--words", type=int, default=20, help="promoted tokens per neuron (default 20)")
    n.add_argument("--images", type=int, default=360, help="validation images to read (default 360: all)")
    n.set_defaults(func=cmd_neurons)


def cmd_tokenize_image(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.spae import _check_model, image_to_words, read_image, save_reconstructions

    from .cli_common import model_dir
    from .generation.image_file import check_image_target
    if args.recon:  # refused before any work, naming --recon (the command has no --overwrite)
        check_image_target(args.recon, flag="--recon", overwrite_flag=None)
    model = genmodels.load(model_dir(args.path))
    _check_model(model, args.path)
    x = read_image(model, args.image)
    for level, (g, words) in enumerate(zip(model.config.levels, image_to_words(model, x)[0]), 1):
        print(f"{level} ({g}×{g}): {' '.join(words)}")
    if args.recon:
        print(f"reconstructions: {save_reconstructions(model, x, args.recon)}")
    return 0


def cmd_neurons(args: argparse.Namespace) -> int:
    from pathlib import Path

    import genmodels
    from genmodels.data.images import load_images
    from genmodels.interop.lm_vocab import resolve
    from genmodels.neurons import check_report_targets, probe, write_report
    from genmodels.semantics import DIGIT_WORDS
    from genmodels.spae import _check_model

    from .cli_common import model_dir
    for flag in ("top", "words", "images"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} {getattr(args, flag)} must be >= 1")
    check_report_targets(args.out)  # neither file is refused after the work (nor after the other is written)
    spae = genmodels.load(model_dir(args.path))
    _check_model(spae, args.path)
    lm = genmodels.load(resolve(args.lm))
    lm_ids = spae.codebook.lm_ids
    if int(lm_ids.max()) >= lm.config.vocab_size:
        raise ValueError(f"--lm {args.lm}: its vocabulary ({lm.config.vocab_size}) does not hold the codebook's tokens "
                         "(give the LM the SPAE codebook was read from)")
    val = load_images().val
    x, y = val.images[:args.images], val.labels[:args.images]
    found, share = probe(lm, spae, x, y, list(DIGIT_WORDS), top=args.top, words=args.words)
    tsv, png = write_report(found, x, list(DIGIT_WORDS), Path(args.out))
    print(tsv.read_text(), end="")
    print(f"names its class: {share['share']:.2f} of the top {args.top} neurons (random neurons: "
          f"{share['random_share']:.2f}); {share['neurons']} neurons, {share['images']} images")
    print(f"table: {tsv}\ntop images: {png}")
    return 0
