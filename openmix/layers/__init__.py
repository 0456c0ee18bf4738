"""Network parts that mixers learn with (not mixers themselves).

* :class:`MixBlock`: the attention network of AutoMix, SAMix and AdAutoMix that turns encoder
  features into mixing masks.
"""

from openmix.layers.mix_block import MixBlock, rescale_lam

__all__ = ["MixBlock", "rescale_lam"]
