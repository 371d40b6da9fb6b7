"""Probabilistic circuits for lossless coding (issue 7). So far the HCLT model and its EM
training (hclt.py); the `pc` codec (conditionals + exact entropy coding) is not built yet,
so nothing here is registered."""
