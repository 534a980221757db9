"""2-D convolutions through oneDNN on the CPU: the UNet's ``conv="onednn"`` option.

XLA:CPU runs the UNet's convolutions through Eigen, whose weight gradients alone take longer than torch's
whole convolution backward; torch's eager CPU path calls oneDNN. This module calls the same
library, from the ``onednn-cpu-gomp`` wheel (``pip install 'mijax[onednn]'``; its ``libdnnl.so.3`` lands in
``<prefix>/lib``), through its C API with :mod:`ctypes`: no compiler, no build step.

Each convolution shape gets a plan (oneDNN's forward, input-gradient and weight-gradient primitives, with
the reorders between HWIO kernels and the blocked weight layouts oneDNN picks), registered as two CPU
custom-call targets of XLA's FFI whose handlers are ctypes callbacks: XLA hands them its own operand and
result buffers, so nothing is copied (a ``jax.pure_callback`` copies every operand and result, ~0.3 ms per
8 MB, which cost as much as the convolutions saved). A :func:`jax.custom_vjp` joins them, so:

- :func:`conv_general_dilated` (the signature of :func:`jax.lax.conv_general_dilated`, for NHWC images, HWIO
  kernels, strides and padding; no dilation, no groups, float32) and :func:`conv_with_bias` /
  :class:`Conv` (``flax.linen.Conv``'s twin with the bias inside the call) take reverse-mode
  differentiation and ``vmap`` (a loop over the mapped axis); forward mode (``jvp``) raises;
- they run on the host: CPU only (:func:`check_backend`);
- each call runs on oneDNN's OpenMP threads (every core unless ``OMP_NUM_THREADS`` says otherwise) and calls
  are serialised (the sampler and the trainer give such a model one CPU device per process: its plan's
  ``calls_use_all_cores``, :mod:`mijax.execution`);
  the numbers are oneDNN's float32 sums, XLA's to float32 rounding (tested), not bit-equal to them.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mijax.errors import MijaxError

INSTALL_HINT = "pip install 'mijax[onednn]' (the onednn-cpu-gomp wheel)"

# The C API's constants (oneapi/dnnl/dnnl_types.h and dnnl_common_types.h; stable within oneDNN 3.x).
_F32, _CPU, _STREAM_IN_ORDER, _FORMAT_ANY = 3, 1, 1, 1
_FORWARD_TRAINING, _CONVOLUTION_DIRECT = 64, 1
_QUERY_IMPL_INFO, _QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 8, 131, 132
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS = 1, 17, 33, 41
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS, _ARG_DIFF_BIAS = 129, 145, 161, 169
_MAX_NDIMS = 12

_P = ctypes.c_void_p
_Dims = ctypes.c_int64 * _MAX_NDIMS


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _P)]


def _library_paths() -> list[str]:
    names = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))]):
        names.append(os.path.join(prefix, "lib", "libdnnl.so.3"))
    return names + ["libdnnl.so.3"]


class _Dnnl:
    """The loaded library, one CPU engine and one in-order stream."""

    def __init__(self):
        for path in _library_paths():
            try:
                self.lib = ctypes.CDLL(path)
                self.path = path
                break
            except OSError:
                continue
        else:
            raise MijaxError(f"oneDNN (libdnnl.so.3) is not installed: {INSTALL_HINT}")
        lib = self.lib
        ptr, pptr, i64p = _P, ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_int64)
        sigs = {
            "dnnl_engine_create": [pptr, ctypes.c_int, ctypes.c_size_t],
            "dnnl_stream_create": [pptr, ptr, ctypes.c_uint],
            "dnnl_stream_wait": [ptr],
            "dnnl_memory_desc_create_with_strides": [pptr, ctypes.c_int, i64p, ctypes.c_int, i64p],
            "dnnl_memory_desc_create_with_tag": [pptr, ctypes.c_int, i64p, ctypes.c_int, ctypes.c_int],
            "dnnl_convolution_forward_primitive_desc_create": [pptr, ptr, ctypes.c_int, ctypes.c_int, ptr, ptr, ptr,
                                                               ptr, i64p, i64p, i64p, i64p, ptr],
            "dnnl_convolution_backward_data_primitive_desc_create": [pptr, ptr, ctypes.c_int, ptr, ptr, ptr, i64p,
                                                                     i64p, i64p, i64p, ptr, ptr],
            "dnnl_convolution_backward_weights_primitive_desc_create": [pptr, ptr, ctypes.c_int, ptr, ptr, ptr,
                                                                        ptr, i64p, i64p, i64p, i64p, ptr, ptr],
            "dnnl_reorder_primitive_desc_create": [pptr, ptr, ptr, ptr, ptr, ptr],
            "dnnl_primitive_desc_query": [ptr, ctypes.c_int, ctypes.c_int, ptr],
            "dnnl_primitive_create": [pptr, ptr],
            "dnnl_primitive_execute": [ptr, ptr, ctypes.c_int, ctypes.POINTER(_Arg)],
            "dnnl_memory_create": [pptr, ptr, ptr, ptr],
            "dnnl_memory_set_data_handle": [ptr, ptr],
        }
        for name, argtypes in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.dnnl_primitive_desc_query_md.argtypes = [ptr, ctypes.c_int, ctypes.c_int]
        lib.dnnl_primitive_desc_query_md.restype = ptr
        lib.dnnl_memory_desc_get_size.argtypes = [ptr]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.engine = self.new("dnnl_engine_create", _CPU, 0)
        self.stream = self.new("dnnl_stream_create", self.engine, _STREAM_IN_ORDER)
        self.lock = threading.Lock()

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"oneDNN: {what} failed (dnnl_status_t {status})")

    def new(self, fn: str, *args) -> _P:
        out = _P()
        self.check(getattr(self.lib, fn)(ctypes.byref(out), *args), fn)
        return out

    def md(self, dims: Sequence[int], strides: Optional[Sequence[int]] = None) -> _P:
        """A float32 memory descriptor: plain with ``strides`` (in elements), else any layout."""
        if strides is None:
            return self.new("dnnl_memory_desc_create_with_tag", len(dims), _dims(*dims), _F32, _FORMAT_ANY)
        return self.new("dnnl_memory_desc_create_with_strides", len(dims), _dims(*dims), _F32, _dims(*strides))

    def query_md(self, pd: _P, what: int) -> _P:
        return _P(self.lib.dnnl_primitive_desc_query_md(pd, what, 0))

    def impl(self, pd: _P) -> str:
        out = ctypes.c_char_p()
        self.check(self.lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO, 0, ctypes.byref(out)), "query")
        return out.value.decode()

    def memory(self, md: _P) -> _P:
        return self.new("dnnl_memory_create", md, self.engine, None)

    def run(self, primitive: _P, args: Sequence[tuple[int, _P]]) -> None:
        packed = (_Arg * len(args))(*[_Arg(k, m) for k, m in args])
        self.check(self.lib.dnnl_primitive_execute(primitive, self.stream, len(args), packed), "execute")
        self.check(self.lib.dnnl_stream_wait(self.stream), "wait")

    def bind(self, memory: _P, address: Any) -> _P:
        """``memory`` pointed at ``address`` (an int, or a NumPy array's data)."""
        if isinstance(address, np.ndarray):
            address = address.ctypes.data
        self.check(self.lib.dnnl_memory_set_data_handle(memory, _P(address)), "set handle")
        return memory


def _dims(*values: int) -> _Dims:
    out = _Dims()
    for i, v in enumerate(values):
        out[i] = int(v)
    return out


@functools.lru_cache(maxsize=None)
def _dnnl() -> _Dnnl:
    return _Dnnl()


def available() -> bool:
    """Whether oneDNN's library loads here."""
    try:
        _dnnl()
        return True
    except MijaxError:
        return False


def check_backend() -> None:
    """Raise :class:`MijaxError` unless oneDNN loads and JAX's default backend is the CPU."""
    _dnnl()
    if jax.default_backend() != "cpu":
        raise MijaxError(f"conv='onednn' runs on the CPU only; JAX's default backend here is "
                         f"{jax.default_backend()!r} (use conv='xla')")


class _Plan:
    """The primitives of one convolution shape: forward, input gradient and weight gradient (with the bias and
    its gradient when the key says so), the reorders between HWIO kernels and oneDNN's chosen weight layouts,
    and memory objects rebound per call."""

    def __init__(self, key: tuple):
        (n, h, w, ci), (kh, kw, co), (ho, wo), strides, pads, bias = key
        d = self.d = _dnnl()
        src = d.md((n, ci, h, w), (h * w * ci, 1, w * ci, ci))  # NHWC, in oneDNN's logical NCHW order
        dst = d.md((n, co, ho, wo), (ho * wo * co, 1, wo * co, co))
        hwio = d.md((co, ci, kh, kw), (1, co, kw * ci * co, ci * co))  # HWIO, in its logical OIHW order
        geometry = (_dims(*strides), _dims(0, 0), _dims(pads[0][0], pads[1][0]), _dims(pads[0][1], pads[1][1]))
        any_w = d.md((co, ci, kh, kw))
        vector = d.md((co,), (1,)) if bias else None
        fwd = d.new("dnnl_convolution_forward_primitive_desc_create", d.engine, _FORWARD_TRAINING,
                    _CONVOLUTION_DIRECT, src, any_w, vector, dst, *geometry, None)
        bwd_d = d.new("dnnl_convolution_backward_data_primitive_desc_create", d.engine, _CONVOLUTION_DIRECT,
                      src, any_w, dst, *geometry, fwd, None)
        bwd_w = d.new("dnnl_convolution_backward_weights_primitive_desc_create", d.engine, _CONVOLUTION_DIRECT,
                      src, any_w, vector, dst, *geometry, fwd, None)
        self.impls = (d.impl(fwd), d.impl(bwd_d), d.impl(bwd_w))
        w_fwd, w_bwd_d = d.query_md(fwd, _QUERY_WEIGHTS_MD), d.query_md(bwd_d, _QUERY_WEIGHTS_MD)
        w_bwd_w = d.query_md(bwd_w, _QUERY_DIFF_WEIGHTS_MD)
        self.fwd, self.bwd_d, self.bwd_w = (d.new("dnnl_primitive_create", pd) for pd in (fwd, bwd_d, bwd_w))
        self.to_fwd, self.to_bwd_d, self.from_bwd_w = (
            d.new("dnnl_primitive_create", d.new("dnnl_reorder_primitive_desc_create", a, d.engine, b, d.engine, None))
            for a, b in ((hwio, w_fwd), (hwio, w_bwd_d), (w_bwd_w, hwio)))
        # oneDNN's weight buffers (blocked layouts may pad the channels), owned here
        self.buffers = [np.zeros(d.lib.dnnl_memory_desc_get_size(md) // 4 + 16, np.float32)
                        for md in (w_fwd, w_bwd_d, w_bwd_w)]
        self.w_fwd, self.w_bwd_d, self.w_bwd_w = (d.bind(d.memory(md), b) for md, b in
                                                  zip((w_fwd, w_bwd_d, w_bwd_w), self.buffers))
        self.src, self.dst, self.hwio = d.memory(src), d.memory(dst), d.memory(hwio)
        self.src2 = d.memory(src)
        self.vector = d.memory(vector) if bias else None
        self.bias = bias
        self.shapes = (n, h, w, ci), (n, ho, wo, co), (kh, kw, ci, co)

    def forward(self, x: int, kernel: int, *rest: int) -> None:
        """y = conv(x, kernel) [+ bias], on the buffers at these addresses (NHWC, HWIO, [C_out,] NHWC):
        ``rest`` is (y,) or (bias, y)."""
        d = self.d
        with d.lock:
            d.run(self.to_fwd, [(_ARG_SRC, d.bind(self.hwio, kernel)), (_ARG_DST, self.w_fwd)])
            args = [(_ARG_SRC, d.bind(self.src, x)), (_ARG_WEIGHTS, self.w_fwd), (_ARG_DST, d.bind(self.dst, rest[-1]))]
            if self.bias:
                args.append((_ARG_BIAS, d.bind(self.vector, rest[0])))
            d.run(self.fwd, args)

    def backward(self, x: int, kernel: int, g: int, dx: int, dw: int, *db: int) -> None:
        """dx, dw [, db] = the input, kernel [and bias] gradients of conv(x, kernel) [+ bias] for the output
        gradient g."""
        d = self.d
        with d.lock:
            d.run(self.to_bwd_d, [(_ARG_SRC, d.bind(self.hwio, kernel)), (_ARG_DST, self.w_bwd_d)])
            d.bind(self.dst, g)
            d.run(self.bwd_d, [(_ARG_DIFF_DST, self.dst), (_ARG_WEIGHTS, self.w_bwd_d),
                               (_ARG_DIFF_SRC, d.bind(self.src2, dx))])
            args = [(_ARG_SRC, d.bind(self.src, x)), (_ARG_DIFF_DST, self.dst), (_ARG_DIFF_WEIGHTS, self.w_bwd_w)]
            if self.bias:
                args.append((_ARG_DIFF_BIAS, d.bind(self.vector, db[0])))
            d.run(self.bwd_w, args)
            d.run(self.from_bwd_w, [(_ARG_SRC, self.w_bwd_w), (_ARG_DST, d.bind(self.hwio, dw))])


@functools.lru_cache(maxsize=None)
def _plan(key: tuple) -> _Plan:
    return _Plan(key)


# ---- XLA's FFI, from Python: the call frame's layout (jaxlib/include/xla/ffi/api/c_api.h, API 0.x) ----------
# Each plan's forward and backward are registered as a CPU custom-call target whose handler is a ctypes
# callback: XLA passes the operands' and results' own buffers, so nothing is copied (a pure_callback copies
# every operand and result, ~0.3 ms per 8 MB: as much again as the convolutions save).

class _ExtBase(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", _P)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P), ("major", ctypes.c_int),
                ("minor", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion), ("traits", ctypes.c_uint32),
                ("state_type_id", ctypes.c_int64)]


class _MetadataExt(ctypes.Structure):
    _fields_ = [("base", _ExtBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P), ("dtype", ctypes.c_int),
                ("data", _P), ("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Operands(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P), ("size", ctypes.c_int64),
                ("types", _P), ("buffers", ctypes.POINTER(_P))]


class _Attrs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P), ("size", ctypes.c_int64),
                ("types", _P), ("names", _P), ("attrs", _P)]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", _P), ("api", _P), ("ctx", _P),
                ("stage", ctypes.c_int), ("args", _Operands), ("rets", _Operands), ("attrs", _Attrs),
                ("future", _P)]


_FFI_API_VERSION = (0, 1)  # the oldest API with this frame; XLA accepts handlers of its major version
_FFI_EXTENSION_METADATA, _FFI_STAGE_EXECUTE, _FFI_F32 = 1, 3, 11
_HANDLER = ctypes.CFUNCTYPE(_P, _P)
_TARGETS: dict[tuple, str] = {}
_HANDLERS: list = []  # the ctypes callbacks must outlive every program that calls them


def _addresses(operands: _Operands) -> list[int]:
    out = []
    for i in range(operands.size):
        buffer = _Buffer.from_address(operands.buffers[i])
        if buffer.dtype != _FFI_F32:
            raise TypeError(f"oneDNN convolution: operand {i} is not float32 (XLA dtype {buffer.dtype})")
        out.append(buffer.data)
    return out


def _handler(run) -> _HANDLER:
    def handle(frame_address: int):
        try:
            frame = _CallFrame.from_address(frame_address)
            if frame.extension_start and _ExtBase.from_address(frame.extension_start).type == _FFI_EXTENSION_METADATA:
                metadata = _MetadataExt.from_address(frame.extension_start).metadata.contents
                metadata.api_version = _ApiVersion(ctypes.sizeof(_ApiVersion), None, *_FFI_API_VERSION)
                metadata.traits = 0
                return None
            if frame.stage == _FFI_STAGE_EXECUTE:
                run(*_addresses(frame.args), *_addresses(frame.rets))
            return None
        except BaseException:  # an exception cannot cross into XLA: say what happened and stop the process
            import traceback
            traceback.print_exc()
            sys.stderr.write("mijax: a oneDNN convolution failed inside XLA; aborting\n")
            sys.stderr.flush()
            os.abort()
    return _HANDLER(handle)


def _target(kind: str, key: tuple) -> str:
    """The custom-call target of ``kind`` (forward or backward) for convolution ``key``, registered once."""
    if (kind, key) not in _TARGETS:
        plan = _plan(key)
        handler = _handler(plan.forward if kind == "forward" else plan.backward)
        # named by the shape, not by the order of registration: a program compiled in another process (JAX's
        # compilation cache) calls the target of its own shape
        (n, h, w, ci), (kh, kw, co), (ho, wo), strides, pads, bias = key
        name = (f"mijax_onednn_{kind}{'_bias' if bias else ''}_n{n}_h{h}_w{w}_i{ci}_k{kh}x{kw}_o{co}"
                f"_s{strides[0]}x{strides[1]}_p{pads[0][0]}-{pads[0][1]}-{pads[1][0]}-{pads[1][1]}")
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
        _HANDLERS.append(handler)
        _TARGETS[(kind, key)] = name
    return _TARGETS[(kind, key)]


def _key(x_shape, w_shape, strides, pads, bias: bool = False) -> tuple:
    n, h, w, _ = x_shape
    kh, kw, ci, co = w_shape
    ho = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
    wo = (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
    return (n, h, w, ci), (kh, kw, co), (ho, wo), tuple(strides), tuple(tuple(p) for p in pads), bool(bias)


def _out_shape(key: tuple) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((key[0][0], *key[2], key[1][2]), jnp.float32)


def _call(kind: str, key: tuple, results: Any, *operands: jnp.ndarray) -> Any:
    return jax.ffi.ffi_call(_target(kind, key), results, vmap_method="sequential")(*operands)


def _gradient_shapes(x: jnp.ndarray, kernel: jnp.ndarray, bias: bool) -> tuple:
    shapes = (x.shape, kernel.shape) + (((kernel.shape[3],),) if bias else ())
    return tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple, pads: tuple) -> jnp.ndarray:
    key = _key(x.shape, kernel.shape, strides, pads)
    return _call("forward", key, _out_shape(key), x, kernel)


def _conv_fwd(x, kernel, strides, pads):
    return _conv(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, saved, g):
    x, kernel = saved
    return _call("backward", _key(x.shape, kernel.shape, strides, pads), _gradient_shapes(x, kernel, False),
                 x, kernel, g)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_bias(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray, strides: tuple, pads: tuple) -> jnp.ndarray:
    key = _key(x.shape, kernel.shape, strides, pads, bias=True)
    return _call("forward", key, _out_shape(key), x, kernel, bias)


def _conv_bias_fwd(x, kernel, bias, strides, pads):
    return _conv_bias(x, kernel, bias, strides, pads), (x, kernel)


def _conv_bias_bwd(strides, pads, saved, g):
    x, kernel = saved
    return _call("backward", _key(x.shape, kernel.shape, strides, pads, bias=True), _gradient_shapes(x, kernel, True),
                 x, kernel, g)


_conv_bias.defvjp(_conv_bias_fwd, _conv_bias_bwd)

_NHWC = ("NHWC", "HWIO", "NHWC")


def _geometry(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int], padding: Any) -> tuple:
    if lhs.ndim != 4 or rhs.ndim != 4:
        raise ValueError(f"oneDNN convolutions take NHWC images and HWIO kernels, got {lhs.shape} and {rhs.shape}")
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        raise ValueError(f"oneDNN convolutions here run in float32, got {lhs.dtype} and {rhs.dtype}")
    if lhs.shape[3] != rhs.shape[2]:
        raise ValueError(f"the image has {lhs.shape[3]} channels, the kernel takes {rhs.shape[2]}")
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(strides) != 2 or len(pads) != 2 or any(lo < 0 or hi < 0 for lo, hi in pads) or min(strides) < 1:
        raise ValueError(f"strides {strides} and padding {pads} must be two positive and two non-negative pairs")
    return strides, tuple(tuple(p) for p in pads)


def conv_general_dilated(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Optional[Sequence[int]] = None, rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jnp.ndarray:
    """:func:`jax.lax.conv_general_dilated` through oneDNN, for ``lhs [N, H, W, C_in]`` (float32) and
    ``rhs [KH, KW, C_in, C_out]`` -> ``[N, H_out, W_out, C_out]``; other layouts, dilations and groups raise."""
    if lhs.ndim == 4 and rhs.ndim == 4 and dimension_numbers is not None and \
            lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != \
            lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
        raise ValueError(f"oneDNN convolutions take NHWC / HWIO / NHWC, got {dimension_numbers}")
    if any(v not in (None, 1) and tuple(v) != (1,) * len(v) for v in (lhs_dilation, rhs_dilation)) or \
            feature_group_count != 1 or batch_group_count != 1:
        raise ValueError("oneDNN convolutions here take no dilation and no groups")
    return _conv(lhs, rhs, *_geometry(lhs, rhs, window_strides, padding))


def conv_with_bias(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray, strides: Sequence[int] = (1, 1),
                   padding: Any = "SAME") -> jnp.ndarray:
    """``conv(x [N, H, W, C_in], kernel [KH, KW, C_in, C_out]) + bias [C_out]`` -> ``[N, H_out, W_out, C_out]``
    in one oneDNN call each way (the bias's gradient comes with the kernel's)."""
    if bias.shape != (kernel.shape[-1],) or bias.dtype != jnp.float32:
        raise ValueError(f"the bias must be float32 [{kernel.shape[-1]}], got {bias.dtype} {bias.shape}")
    return _conv_bias(x, kernel, bias, *_geometry(x, kernel, strides, padding))


class Conv(nn.Module):
    """``flax.linen.Conv`` on oneDNN: the same parameters (``kernel [KH, KW, C_in, C_out]``, ``bias``), the same
    initialisers and the same automatic name (``Conv_<i>``), for NHWC inputs ``[N, H, W, C_in]``; the bias is
    added inside the convolution."""

    features: int
    kernel_size: Sequence[int]
    strides: Any = 1
    padding: Any = "SAME"
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel_size = tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        return conv_with_bias(x, kernel, bias, strides, nn.linear.canonicalize_padding(self.padding, 2))


def implementations(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int] = (1, 1),
                    padding: Any = "SAME") -> tuple[str, str, str]:
    """oneDNN's implementation names for one convolution's forward, input and weight gradient (e.g.
    ``brgconv:avx512_core``), for the record; builds its plan."""
    x, kernel = (jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for shape in (x_shape, kernel_shape))
    return _plan(_key(x.shape, kernel.shape, *_geometry(x, kernel, strides, padding), bias=True)).impls


__all__ = ["INSTALL_HINT", "Conv", "available", "check_backend", "conv_general_dilated", "conv_with_bias",
           "implementations"]
