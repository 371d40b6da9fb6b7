# The compiled hot loops live in one C extension; everything else is in pyproject.toml.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nzip.codecs.entropy._entropy",
            sources=["nzip/codecs/entropy/_entropy.c"],
            extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
        )
    ]
)
