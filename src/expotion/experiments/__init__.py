"""Experiments: a table of systems from one file (``expotion experiment``), resumable step by step.

:mod:`~expotion.experiments.spec` reads the file, :mod:`~expotion.experiments.runner` runs the shared steps and the
rows as command lines (:mod:`~expotion.experiments.steps` keys them), :mod:`~expotion.experiments.table` writes the
table, and :mod:`~expotion.experiments.slurm` the cluster scripts.
"""
