"""Evaluation beyond top-1: calibration, corruption, adversarial and occlusion robustness, and
out-of-distribution detection.

* :func:`evaluate`: every metric for a model on its datamodule's validation split
  (:class:`EvalSettings` says which, on how many images, with which seed);
* :func:`evaluate_run` / ``openmix-eval RUNS...``: the same for the trained model of a run folder,
  written to ``eval.json`` beside its result row (``openmix-train`` does it at the end of a run);
* the parts: :mod:`.calibration`, :mod:`.corruptions`, :mod:`.adversarial`, :mod:`.occlusion`, :mod:`.ood`.
"""

from openmix.evaluation.evaluate import EVAL_SCHEMA, EvalSettings, evaluate, robustness
from openmix.evaluation.runs import evaluate_run, load_run, run_weights

__all__ = ["EVAL_SCHEMA", "EvalSettings", "evaluate", "robustness", "evaluate_run", "load_run", "run_weights"]
