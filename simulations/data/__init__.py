"""A simulation's data: where the records come from, how they are split across virtual sites, what the split looks like.

``sources`` loads a bundled scikit-learn set, a seeded synthetic set, or a
researcher's own CSV/Parquet file checked against a site schema;
``partitioners`` splits it (``iid``, ``dirichlet:α``, ``by-column:COL``,
``quantity-skew:β``); ``sites`` writes the virtual sites' files;
``report``, ``plot`` and ``render`` describe the split (JSON, figure, table).
Nothing here imports torch, Flower or Ray: ``fedguard data partition``
previews a split without them.
"""
