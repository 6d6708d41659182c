"""Training checks as pytest: short TRL jobs declared as data (``training/<job>/job.yaml``), run once
per pytest run and shared by every gate and test that asks for them, with trainer regression gates.

- :mod:`.job`: the job file (loading, validation, errors naming file and line).
- :mod:`.tiny`: models and tokenizers made offline (a tiny model from a config, a tokenizer trained
  from the job's data).
- :mod:`.runner`: one job run through TRL, returning a :class:`.runner.TrainRun`.
- :mod:`.checks`: the trainer regression checks, as named gate metrics over a run.
- :mod:`.collect` / :mod:`.shared`: job files as pytest items; one run per job across xdist workers.

torch, transformers and trl are imported only when a job runs.
"""
