"""Where a teacher's outputs come from (none, a trained stage, a checkpoint, a model as its
factory delivers it, the cache), a teacher reused from an earlier run or seed, its inference
precision, and the augmentation replay the cache relies on."""
