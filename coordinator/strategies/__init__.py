"""The coordinator's Flower strategies: an aggregation rule wrapped in fedguard's layers.

One module per layer; :mod:`coordinator.strategies.builder` assembles them
in the one order that is documented there.
"""
