"""Experiments: a grid of simulation settings run as Ray Tune trials, and the report drawn from their results.

``grid`` reads a grid file into trials, ``runner`` runs them (each trial one
``fedguard`` simulation in its own process), ``records`` turns outcomes into
one JSON per trial and a Parquet table, ``report`` and ``figures`` draw them.
"""
