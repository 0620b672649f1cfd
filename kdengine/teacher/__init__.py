"""Where a teacher's outputs come from (none, a trained stage, a checkpoint, the cache), its
inference precision, and the augmentation replay the cache relies on."""
