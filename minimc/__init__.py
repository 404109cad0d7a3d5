"""minimc: Memory Caching for recurrent models, small enough to read in one sitting.

Modules, in the direction data flows (each uses only those before it; none imports triton but
``kernel``, which is imported only when ``backend="triton"`` is asked for):
checks -> memories -> readout (-> kernel) -> caching -> layers -> data, train; viz for the book.
"""
from .caching import CachingStream, gate, memory_caching, mix_weights, segment_bounds
from .memories import MEMORIES, init_deep_weights, make_memory, recurrent_memory
from .readout import cached_readout, cached_readout_reference, sparse_readout

__all__ = ["CachingStream", "gate", "memory_caching", "mix_weights", "segment_bounds",
           "MEMORIES", "init_deep_weights", "make_memory", "recurrent_memory", "cached_readout",
           "cached_readout_reference", "sparse_readout"]
