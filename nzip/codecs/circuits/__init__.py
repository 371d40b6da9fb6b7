"""Probabilistic circuits for lossless coding (Liu, Mandt, Van den Broeck, ICLR 2022).

    hclt.py          the model: hidden Chow-Liu trees, likelihood, structure learning
    train.py         mini-batch (online) EM and full-batch EM, augmentation
    quantized.py     the integer model the codec codes with
    model_file.py    the .nzpc file format
    conditionals.py  P(x_i | x_<i), incremental and exact on any machine
    codec.py         the `pc` codec (constriction range coding); models/ holds the shipped one
"""

from .codec import load_model, remember

__all__ = ["load_model", "remember"]
