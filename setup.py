# The compiled hot loops live in two C extensions; everything else is in pyproject.toml.
from setuptools import Extension, setup

FLAGS = dict(extra_compile_args=["-O3", "-std=gnu11", "-fno-strict-aliasing", "-pthread"],
             extra_link_args=["-pthread", "-lm"])

setup(
    ext_modules=[
        Extension("nzip.codecs.entropy._entropy", sources=["nzip/codecs/entropy/_entropy.c"], **FLAGS),
        Extension("nzip.codecs.entropy._mixing", sources=["nzip/codecs/entropy/_mixing.c"], **FLAGS),
    ]
)
