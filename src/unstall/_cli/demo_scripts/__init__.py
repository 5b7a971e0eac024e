"""The two scripts ``unstall demo`` runs, shipped with the package (also in ``examples/``)."""
