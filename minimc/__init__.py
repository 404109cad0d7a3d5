"""minimc: Memory Caching for recurrent models, small enough to read in one sitting."""
from .caching import CachingStream, gate, memory_caching, segment_bounds
from .kernel import cached_readout, cached_readout_reference, sparse_readout
from .memories import MEMORIES, init_deep_weights, make_memory, recurrent_memory

__all__ = ["CachingStream", "gate", "memory_caching", "segment_bounds", "cached_readout",
           "cached_readout_reference", "sparse_readout", "MEMORIES", "init_deep_weights",
           "make_memory", "recurrent_memory"]
