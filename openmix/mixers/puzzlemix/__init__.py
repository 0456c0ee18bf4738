"""PuzzleMix (Kim, Choo & Song, ICML 2020; arXiv 2009.06962): saliency-guided block mixing with
an optimised multi-label mask and saliency-discounted transport, batched on the device.

One module per job:

* :mod:`.saliency`: the input-gradient saliency of the clean batch;
* :mod:`.energy`: the official labelling energy of the block masks;
* :mod:`.solver`: its batched minimisation (exact row DP, chain dual decomposition), the masks;
* :mod:`.transport`: the official greedy transport of the blocks;
* :mod:`.mixer`: :class:`PuzzleMix`, the step that puts them together (registered ``"puzzlemix"``);
  its data term and adversarial step work in pixels (:mod:`openmix.pixels`).

The design (why this solver, the official code's int32 overflow, the transport's tie rules,
memory and image sizes): ``docs/puzzlemix.md``.
"""

from openmix.mixers.puzzlemix.energy import PuzzleProblem, puzzle_energy, puzzle_problem
from openmix.mixers.puzzlemix.mixer import PuzzleMix
from openmix.mixers.puzzlemix.saliency import input_saliency
from openmix.mixers.puzzlemix.solver import puzzle_masks, solve_puzzle
from openmix.mixers.puzzlemix.transport import mask_transport, transport_blocks

__all__ = [
    "PuzzleMix",
    "PuzzleProblem",
    "puzzle_problem",
    "puzzle_energy",
    "solve_puzzle",
    "puzzle_masks",
    "mask_transport",
    "transport_blocks",
    "input_saliency",
]
