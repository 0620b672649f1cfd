"""Training: the stages of one run, the epoch loop, the step, evaluation, optimisers, memory budget."""
