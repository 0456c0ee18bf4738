"""Co-Mixup (Kim, Choo, Jeong & Song, ICLR 2021; arXiv 2102.03065): saliency-guided joint mixup of whole
partitions of the batch with supermodular diversity, solved batched on the device.

One module per job:

* :mod:`.objective`: the official objective in floats (:func:`comixup_objective`) and its problem
  (:func:`comixup_problem`: block saliency, Dirichlet prior, compatibility, partitions);
* :mod:`.solver`: its batched block-coordinate minimisation (:func:`solve_comixup`), each output's Potts
  labelling by an exact row DP (:func:`potts_labels`);
* :mod:`.mixer`: :class:`CoMixup`, the training step (registered ``"comixup"``).

The design and the measurements against the official solver: ``docs/comixup.md``.
"""

from openmix.mixers.comixup.mixer import CoMixup, match_outputs
from openmix.mixers.comixup.objective import CoMixupProblem, comixup_objective, comixup_problem
from openmix.mixers.comixup.solver import potts_labels, solve_comixup

__all__ = [
    "CoMixup",
    "CoMixupProblem",
    "comixup_problem",
    "comixup_objective",
    "solve_comixup",
    "potts_labels",
    "match_outputs",
]
