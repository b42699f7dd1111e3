"""Training shared by distill and prune's recovery: the loop, its losses, data parallelism."""
