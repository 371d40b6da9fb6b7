"""CUDA C kernels compiled at run time (NVRTC) and launched on PyTorch's stream.

No binaries ship with nzip and nothing is built at install time: the source of each kernel
lives beside its codec, NVRTC compiles it for the GPU at hand on first use (a fraction of
a second), and the CUDA driver API launches it with the pointers of torch tensors. Both
libraries are loaded through ctypes, so this needs no cupy, no nvcc and no C++ build: only
a CUDA build of torch (whose wheels bring libnvrtc) and the NVIDIA driver.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading

from ..errors import NzipError


class CudaError(NzipError, RuntimeError):
    """CUDA could not compile or launch a kernel."""


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _find_nvrtc() -> ctypes.CDLL:
    names = []
    found = ctypes.util.find_library("nvrtc")
    if found:
        names.append(found)
    # pip wheels (nvidia-cuda-nvrtc*) put it under site-packages/nvidia/**/lib
    for base in sys.path:
        names += sorted(glob.glob(os.path.join(base, "nvidia", "**", "libnvrtc.so*"), recursive=True), reverse=True)
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            names += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")), reverse=True)
    for name in names:
        if "builtins" in os.path.basename(name):
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise CudaError("NVRTC (libnvrtc.so) not found: install a CUDA build of torch or the CUDA toolkit")


class _Libraries:
    def __init__(self):
        try:
            self.cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise CudaError(f"the CUDA driver (libcuda.so.1) could not be loaded: {e}") from None
        self.nvrtc = _find_nvrtc()

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = ctypes.c_char_p()
            self.cuda.cuGetErrorString(rc, ctypes.byref(msg))
            raise CudaError(f"{what} failed: CUDA error {rc} ({(msg.value or b'?').decode()})")

    def compile(self, source: str, name: str, arch: tuple[int, int], options: list[str]) -> tuple[bytes, bool]:
        """Compile `source` for compute capability `arch`: (image, is_cubin). Falls back to
        PTX (compiled by the driver) when this NVRTC does not know the GPU."""
        nv = self.nvrtc
        for target, cubin in ((f"sm_{arch[0]}{arch[1]}", True), (f"compute_{arch[0]}{arch[1]}", False)):
            prog = ctypes.c_void_p()
            rc = nv.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
            if rc:
                raise CudaError(f"nvrtcCreateProgram failed ({rc})")
            opts = [f"--gpu-architecture={target}", "--std=c++17", *options]
            arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
            size = ctypes.c_size_t()
            nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nv.nvrtcGetProgramLog(prog, log)
            if rc == 0:
                get_size, get = (nv.nvrtcGetCUBINSize, nv.nvrtcGetCUBIN) if cubin else (nv.nvrtcGetPTXSize, nv.nvrtcGetPTX)
                get_size(prog, ctypes.byref(size))
                image = ctypes.create_string_buffer(size.value)
                get(prog, image)
                nv.nvrtcDestroyProgram(ctypes.byref(prog))
                return image.raw, cubin
            nv.nvrtcDestroyProgram(ctypes.byref(prog))
            if rc != 5:  # 5: NVRTC_ERROR_INVALID_OPTION, an architecture this NVRTC does not know
                raise CudaError(f"NVRTC could not compile {name}:\n{log.value.decode(errors='replace')}")
        raise CudaError(f"NVRTC knows neither sm_{arch[0]}{arch[1]} nor compute_{arch[0]}{arch[1]}")


_libs: _Libraries | None = None
_lock = threading.Lock()


def _libraries() -> _Libraries:
    global _libs
    with _lock:
        if _libs is None:
            _libs = _Libraries()
        return _libs


class Module:
    """A CUDA C source compiled once per device; `kernel(name)` gives launchable kernels."""

    def __init__(self, source: str, name: str, options: list[str] | None = None):
        self.source, self.name, self.options = source, name, list(options or [])
        self._per_device: dict[int, dict] = {}

    def kernel(self, name: str, device) -> "Kernel":
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        with _lock:
            entry = self._per_device.get(index)
        if entry is None:
            entry = self._load(index)
        fn = entry["functions"].get(name)
        if fn is None:
            libs = _libraries()
            handle = ctypes.c_void_p()
            libs.check(libs.cuda.cuModuleGetFunction(ctypes.byref(handle), entry["module"], name.encode()),
                       f"cuModuleGetFunction({name})")
            fn = entry["functions"][name] = Kernel(handle, entry["context"], index)
        return fn

    def _load(self, index: int) -> dict:
        import torch

        libs = _libraries()
        torch.cuda.init()
        arch = torch.cuda.get_device_capability(index)
        image, _ = libs.compile(self.source, self.name, arch, ["-default-device", *self.options])
        dev, ctx, module = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
        libs.check(libs.cuda.cuInit(0), "cuInit")
        libs.check(libs.cuda.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        # torch runs in the device's primary context: share it
        libs.check(libs.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        libs.check(libs.cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        libs.check(libs.cuda.cuModuleLoadData(ctypes.byref(module), image), f"loading {self.name}")
        entry = {"module": module, "context": ctx, "functions": {}}
        with _lock:
            self._per_device[index] = entry
        return entry


_SHARED_ATTR = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


class Kernel:
    def __init__(self, handle, context, device_index: int):
        self.handle, self.context, self.device_index = handle, context, device_index
        self._shared_set = 48 << 10

    def attribute(self, which: int) -> int:
        """cuFuncGetAttribute: 4 registers per thread, 3 local (spilled) bytes per thread."""
        value = ctypes.c_int()
        _libraries().check(_libraries().cuda.cuFuncGetAttribute(ctypes.byref(value), which, self.handle),
                           "cuFuncGetAttribute")
        return value.value

    def __call__(self, grid: int, block: int, args: list, shared: int = 0, stream=None) -> None:
        """Launch on `stream` (default: torch's current stream of the kernel's device).
        args: torch tensors (passed as pointers), or ctypes values."""
        self.prepare(grid, block, args, shared)(stream)

    def prepare(self, grid: int, block: int, args: list, shared: int = 0):
        """The launch with its arguments packed once: calling the result costs only
        cuLaunchKernel (what a plan replayed every forward pass wants). Tensors in args
        must outlive it."""
        import torch

        libs = _libraries()
        if shared > self._shared_set:
            libs.check(libs.cuda.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            libs.check(libs.cuda.cuFuncSetAttribute(self.handle, _SHARED_ATTR, shared), "raising shared memory")
            self._shared_set = shared
        holders = []
        for a in args:
            if isinstance(a, torch.Tensor):
                holders.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, int):
                holders.append(ctypes.c_longlong(a))
            else:
                holders.append(a)
        params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        launch_kernel, set_current, check = libs.cuda.cuLaunchKernel, libs.cuda.cuCtxSetCurrent, libs.check
        handle, context, index = self.handle, self.context, self.device_index

        def launch(stream=None) -> None:
            if grid <= 0:
                return
            if stream is None:
                stream = torch.cuda.current_stream(index)
            check(set_current(context), "cuCtxSetCurrent")
            check(launch_kernel(handle, grid, 1, 1, block, 1, 1, shared, ctypes.c_void_p(stream.cuda_stream), params,
                                None), "cuLaunchKernel")

        launch.keep = (holders, params)  # the packed arguments live as long as the launch
        return launch
