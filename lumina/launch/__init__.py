"""Job launch tooling: batch scripts for cluster schedulers (`slurm`)."""
