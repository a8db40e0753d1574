"""The performance benchmark: `cpu` (rollouts, training, TRL, evaluation on a CPU), `gpu` (the trainer's rollouts,
step and phase at the paper's shapes on one GPU), `decode` (its rollout-decoding section, issue #18), `report` and
`gpu_report` (figures and markdown of each), `common` (models, machine, memory). Its commands (`perf`, `perf-gpu`)
are in benchmark/__main__.py."""
