"""Optuna studies that tune every method's hyperparameters with one budget (issue 16).

One study per (family, method, graph, alpha) in a journal file under ``studies/``; a tuned run
uses the values of its own graph's study only. The modules, one job each:

- :mod:`.spec`: the family's ``tuning:`` section (protocol, search spaces, budget); light, the
  workflow imports it to plan the DAG;
- :mod:`.study`: open / lock / check the journal, resume, run the missing trials (``tune``);
- :mod:`.sampler`: TPE reseeded per session, never proposing a point the study holds;
- :mod:`.objective`: one trial (train on the validation split, report, prune);
- :mod:`.outputs`: ``best.json``, ``trials.csv``, plots, the table of best values;
- :mod:`.tracker`: the MLflow parent run (study) and child runs (trials).

This package's ``__init__`` imports nothing heavy, so ``benchmark.grid`` can read the spec.
"""
