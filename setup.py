# The compiled hot loops live in one C extension; everything else is in pyproject.toml.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nzip.codecs.entropy._entropy",
            sources=["nzip/codecs/entropy/_entropy.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-fno-strict-aliasing", "-pthread"],
            extra_link_args=["-pthread", "-lm"],
        )
    ]
)
