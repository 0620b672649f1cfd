"""Files: atomic writes, weights, training state, the run folder, fingerprints, images."""
