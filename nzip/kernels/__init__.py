"""GPU kernels (CUDA C compiled at run time by NVRTC) beside the codecs they decode."""
