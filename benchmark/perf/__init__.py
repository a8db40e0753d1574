"""The performance benchmark: `cpu` (rollouts, training, TRL, evaluation on a CPU), `gpu` (the trainer's rollouts
and step at the paper's shapes on one GPU), `report` (figures and markdown), `common` (models, machine, memory).
Its commands (`perf`, `perf-gpu`) are in benchmark/__main__.py."""
