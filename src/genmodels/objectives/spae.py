"""The SPAE objective: train a semantic pyramid autoencoder (models/spae/) on images (Yu et al. 2023, §3).

    L = mean_l ‖x − D(ẑ_l)‖²                                 pixel reconstruction, every depth l = 1 … L
      + w_cb · mean_l ‖sg(c_l) − ẑ_l‖²  +  β · mean_l ‖c_l − sg(ẑ_l)‖²     VQ-VAE's terms per depth (nn/pyramid.py)
      + w_sem · CE(softmax_k(−‖z_1 − ê(k)‖² / τ), q_y)          the semantic loss on the top (1-token) layer

q_y is uniform over the ``semantic_top_k`` codebook words whose MiniLM vectors are nearest the class word of the
image's label y ("seven"): SPAE's semantic loss with MiniLM and the class word in place of CLIP and the image
(genmodels.semantics; a stated deviation, ../shared/reference/diffusion.md §6). The paper's perceptual, GAN and
LeCAM terms are left out at this scale. β = 0.25 (VQ-VAE). The codebook itself never trains (a buffer); the
codebook term moves the projection P only.

On the trainer: data kind ``spae_images`` (the ``images`` data section, digits offline; its ``sample:`` section
is the reconstruction grid: ``n`` validation images, ``seed``); the lexicon is read from ``model.lexicon`` when
the objective is built (cached) and attached to the model, so ``final/`` keeps its words (tokenizer.json) and
vectors (buffers); evaluation adds PSNR and classifier accuracy of reconstructions per depth; the end of a run
writes ``reconstructions.png`` (a row per depth).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..data.images import ImageDataConfig
from ..data.kinds import DataKind, register_data_kind
from ..semantics import DIGIT_WORDS
from ..values import integer, seed
from .base import Batch, Metrics, Objective, ObjectiveOptions, check_number


@dataclass
class SPAESampleConfig:
    """The ``sample:`` section of an SPAE run: the end-of-run reconstruction grid (``n`` validation images)."""

    n: int = 10
    seed: int = 0

    def validate(self, model_config) -> None:
        integer("sample.n", self.n, 1)
        seed("sample.seed", self.seed)


def _prepare(dc, say):
    from ..training.image_run import prepare_image_data  # (training/ imports this package when it loads)
    return prepare_image_data(dc, say)


SPAE_IMAGES = register_data_kind(DataKind(
    name="spae_images", config_class=ImageDataConfig, sample_class=SPAESampleConfig, prepare=_prepare,
    describe=lambda dc: f"image set (data.source={dc.source!r}, data.path={dc.path!r}, ...)"), replace=True)


@dataclass
class SPAEOptions(ObjectiveOptions):
    name: str = "spae"
    beta: float = 0.25  # commitment weight β (VQ-VAE)
    codebook_weight: float = 1.0  # weight of ‖sg(c) − ẑ‖² (trains the projection P)
    semantic_weight: float = 0.5  # w_sem (0: no semantic loss, no MiniLM)
    semantic_top_k: int = 3  # words per class in the target distribution q_y
    temperature: float = 1.0  # τ of the semantic softmax over −‖z_1 − ê(k)‖²
    class_words: list[str] = field(default_factory=lambda: list(DIGIT_WORDS))  # label i's word
    eval_images: int = 200  # validation images whose reconstructions each evaluation scores

    def validate(self) -> None:
        for name in ("beta", "codebook_weight", "semantic_weight"):
            check_number(self, name, lo=0.0)
        check_number(self, "temperature", lo=0.0, lo_open=True)
        integer(self.where("semantic_top_k"), self.semantic_top_k, 1)
        integer(self.where("eval_images"), self.eval_images, 1)
        if not self.class_words or not all(isinstance(w, str) and w for w in self.class_words):
            raise ConfigError(f"{self.where('class_words')}={self.class_words!r} must be one word per class")


class SPAEObjective(Objective):
    name = "spae"
    Options = SPAEOptions
    data_kinds = ("spae_images",)
    requires = ("method:attach_lexicon",)
    unit = "images"
    flops_apply = False
    perplexity = False
    distributed = False

    def __init__(self, model: nn.Module, options: SPAEOptions | None = None, targets: torch.Tensor | None = None):
        super().__init__(model)
        self.options = options or SPAEOptions()
        # (C, K) the semantic target distributions q_y (not a checkpoint tensor: rebuilt from the lexicon)
        self.register_buffer("targets", targets, persistent=False)

    @classmethod
    def build(cls, model, options, *, n_tokens=0, eos_id=None, loss_chunk=256) -> "SPAEObjective":
        """Attach the lexicon ``model.lexicon`` names (genmodels.lexicon, cached) and, with a semantic loss, the
        class words' target distributions over it."""
        from ..lexicon import lexicon_for
        lex = lexicon_for(model.config)
        model.attach_lexicon(lex)
        targets = None
        if options.semantic_weight > 0:
            from ..semantics import relevance, semantic_targets
            rel = relevance(lex.words, tuple(options.class_words))
            targets = semantic_targets(rel, options.semantic_top_k).to(model.codebook.vectors.device)
        return cls(model, options, targets)

    @classmethod
    def check(cls, options: SPAEOptions, model_config, recipe) -> None:
        m, d = model_config, recipe.data
        for field_name, data_name in (("image_size", "image_size"), ("channels", "channels")):
            if getattr(m, field_name) != getattr(d, data_name):
                raise ConfigError(f"model.{field_name}={getattr(m, field_name)} differs from data.{data_name}="
                                  f"{getattr(d, data_name)}; the model must take the images the data section makes")
        if options.semantic_weight > 0 and m.levels[0] != 1:
            raise ConfigError(f"train.objective.semantic_weight={options.semantic_weight} needs a one-token top "
                              f"layer (model.levels[0]=1; it is {m.levels[0]}); or set semantic_weight 0")
        if options.semantic_top_k > m.codebook_size:
            raise ConfigError(f"train.objective.semantic_top_k={options.semantic_top_k} must be at most "
                              f"model.codebook_size={m.codebook_size}")

    def check_data(self, data) -> None:
        self._images = data.images  # (the end-of-run grid reads validation images)
        n = data.images.train.num_classes
        if self.options.semantic_weight > 0 and n != len(self.options.class_words):
            raise ConfigError(f"train.objective.class_words has {len(self.options.class_words)} words; the data has "
                              f"{n} classes: give one word per class (or semantic_weight 0)")

    def units(self, batch: Batch) -> int:
        return batch["images"].shape[0]

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Metrics]:
        x, o = batch["images"], self.options
        out, recons = self.model(x)
        pixel = torch.stack([F.mse_loss(r, x) for r in recons]).mean()
        loss = pixel + o.codebook_weight * out.codebook + o.beta * out.commitment
        metrics = {"pixel": pixel.detach(), "commit": out.commitment.detach(), "pixel_full": F.mse_loss(
            recons[-1], x).detach()}
        if self.targets is not None:
            table = self.model.codebook.table()  # (K, D)
            logits = -torch.cdist(out.top, table).pow(2) / o.temperature  # (B, K)
            q = self.targets[batch["labels"]]  # (B, K)
            semantic = -(q * logits.log_softmax(-1)).sum(-1).mean()
            loss = loss + o.semantic_weight * semantic
            metrics["semantic"] = semantic.detach()
            metrics["top_hit"] = (q.gather(1, out.ids[0]) > 0).float().mean()  # the top word is a target word
        return loss, metrics

    def prepare_evaluation(self, data) -> None:
        from ..metrics.classifier import load_or_train_classifier
        load_or_train_classifier(data.images.train, data.images.val)

    def evaluate(self, ctx) -> tuple[float | None, dict[str, float]]:
        """The validation loss, then PSNR and classifier accuracy of the reconstructions at each depth."""
        from ..metrics.classifier import load_or_train_classifier
        from ..spae import reconstruction_scores
        vl = ctx.mean_loss()
        val = ctx.data.images.val
        if len(val) == 0:
            return vl, {}
        clf, _ = load_or_train_classifier(ctx.data.images.train, val)
        n = min(self.options.eval_images, len(val))
        was = self.model.training
        self.model.eval()
        try:
            scores = reconstruction_scores(self.model, val.images[:n], val.labels[:n], clf)
        finally:
            self.model.train(was)
        return vl, scores

    def save_final(self, model, folder, tokenizer):
        """``final/`` with the lexicon's word list as its tokenizer.json (the vectors are buffers of the weights)."""
        from ..io import save
        return save(model, folder, self.model.tokenizer)

    def samples(self, model, ctx) -> list[str]:
        """``reconstructions.png``: ``sample.n`` validation images (a fixed draw) and their reconstructions."""
        from ..spae import save_reconstructions
        try:
            val = self._images.val if len(self._images.val) else self._images.train
            g = torch.Generator().manual_seed(ctx.sample.seed)
            pick = torch.randperm(len(val), generator=g)[:ctx.sample.n]
            model.tokenizer = self.model.tokenizer
            path = save_reconstructions(model.eval(), val.images[pick], ctx.run_dir / "reconstructions.png",
                                        overwrite=True)
            ctx.say(f"reconstructions: {path} (top row: the images; then depth 1 … {len(model.config.levels)})")
        except Exception as e:  # a picture is a courtesy: it never costs the run its summary
            ctx.say(f"warning: reconstructions.png not written ({type(e).__name__}: {' '.join(str(e).split())})")
        return []

    def next_command(self, run_dir: Path, program: str, sample_cfg) -> str:
        return f"  words:      {program} tokenize-image {shlex.quote(str(Path(run_dir) / 'final'))} IMAGE.png"
