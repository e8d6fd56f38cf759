"""The `mirrorstream` command line; the library lives in refimpl, simulator and hwmodels."""
