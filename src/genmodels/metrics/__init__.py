"""Offline image metrics (no downloads): a small classifier trained on the real training split and
cached (:mod:`.classifier`), then class accuracy, KID (:mod:`.kid`), precision/recall
(:mod:`.precision_recall`) and FID (:mod:`.fid`) in its feature space; :func:`evaluate_images` runs them all.
"""
from .classifier import (
    ClassifierSettings,
    ImageClassifier,
    classifier_accuracy,
    load_or_train_classifier,
    train_classifier,
)
from .evaluate import evaluate_images, reference_data
from .fid import frechet_distance
from .kid import kid, mmd2_unbiased, polynomial_kernel
from .precision_recall import kth_neighbour_radii, precision_recall

__all__ = [
    "ClassifierSettings",
    "ImageClassifier",
    "classifier_accuracy",
    "evaluate_images",
    "frechet_distance",
    "kid",
    "kth_neighbour_radii",
    "load_or_train_classifier",
    "mmd2_unbiased",
    "polynomial_kernel",
    "precision_recall",
    "reference_data",
    "train_classifier",
]
