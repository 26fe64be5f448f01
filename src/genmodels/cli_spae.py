"""``genmodels tokenize-image``: an image as a pyramid of a frozen LM's words (an SPAE model, docs/spae.md).

    genmodels tokenize-image PATH IMAGE [--recon OUT.png]

``PATH``: an SPAE model folder or run; ``IMAGE``: a picture file (grey or RGB, resized to the model's size; light
ink on dark, like the digits). Prints one line per pyramid layer, ``<layer> (<g>×<g>): word word …`` (row-major);
``--recon``: one PNG with the image and its reconstruction from each depth (1, 1–2, …, all layers).
"""
from __future__ import annotations

import argparse


def add_spae_parsers(sub) -> None:
    t = sub.add_parser("tokenize-image", help="an image as a pyramid of an SPAE model's words")
    t.add_argument("path", help="an SPAE model folder or training run")
    t.add_argument("image", help="an image file (PNG, JPEG, …)")
    t.add_argument("--recon", default=None, help="write the image and its reconstruction at each depth to this PNG")
    t.set_defaults(func=cmd_tokenize_image)


def cmd_tokenize_image(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.spae import _check_model, image_to_words, read_image, save_reconstructions

    from .cli_common import model_dir
    model = genmodels.load(model_dir(args.path))
    _check_model(model)
    x = read_image(model, args.image)
    for level, (g, words) in enumerate(zip(model.config.levels, image_to_words(model, x)[0]), 1):
        print(f"{level} ({g}×{g}): {' '.join(words)}")
    if args.recon:
        print(f"reconstructions: {save_reconstructions(model, x, args.recon)}")
    return 0
