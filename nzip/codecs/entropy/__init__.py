"""Reusable entropy coders: rANS (rans.py), canonical Huffman (huffman.py), zstd glue.

The bit-moving loops are compiled (_entropy.c); table building and stream layout live in
Python beside them.
"""
