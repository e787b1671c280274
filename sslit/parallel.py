"""Devices, meshes and data placement: the only module that knows about devices.

Data parallelism is expressed the current JAX way: one ``jax.jit`` over arrays
whose batch axis is sharded on a one-dimensional ``"data"`` mesh axis, with
everything else (parameters, optimiser state) replicated. Objectives stay
written on the global batch; the compiler inserts the all-reduces (VICReg's
covariance, InfoNCE's negatives, BatchNorm statistics). No ``pmap``, no
``with mesh:`` context.

The mesh axis is ``AxisType.Auto``: since JAX 0.9 ``jax.make_mesh`` defaults to
Explicit axes, under which ``z.T @ z`` of a batch-sharded ``z`` raises.

Multi-host: call :func:`initialize` once per process before anything touches a
device; each process then reads its own shard of every global batch
(``process_local_batch_size``) and :func:`shard_batch` assembles the global
array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS", "initialize", "make_mesh", "data_sharding", "replicated_sharding",
    "shard_batch", "replicate", "process_index", "process_count",
    "process_local_batch_size", "check_batch_size", "to_host", "set_cpu_device_count",
    "serialize_cpu_lapack", "per_matrix", "shard_rows", "step_compiler_options",
    "CPU_STEP_LIBRARY_FUSIONS",
]


def set_cpu_device_count(n: int) -> bool:
  """Ask XLA to split the host CPU into ``n`` virtual devices.

  Only effective before the JAX backend starts (the flag is read once); returns
  whether it could still take effect. Whether two virtual devices beat one on a
  2-core machine depends on the model (1.9x was measured for a 32-64-128 ConvNet at
  batch 256 with plain JAX; the default 16-32-64 ConvNet and the MLP were slower on two, see
  bench/RESULTS_train_step.md), so this is a per-config choice.

  Args:
    n: number of virtual CPU devices (>= 1).

  Returns:
    True if the flag was set before the backend started, False otherwise.
  """
  if n < 1:
    raise ValueError(f"cpu device count must be >= 1, got {n}.")
  flag = "--xla_force_host_platform_device_count"
  started = _backend_started()
  if not started:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag)]
    flags.append(f"{flag}={n}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
  return not started


def serialize_cpu_lapack() -> bool:
  """Work around a jaxlib < 0.11 hang of batched LAPACK kernels on CPUs.

  On jaxlib 0.10, batched Cholesky/eigh/triangular-solve kernels split their batch
  over XLA's intra-op pool and block on it; when XLA's concurrency-optimised
  (breadth-first) schedule runs as many of them at once as the pool has threads
  (2 on a 2-core machine), every worker waits and the program hangs (seen in
  ``cpa.representation_information`` and ``estimators.mixture_entropy_mc``).
  ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` selects XLA's
  depth-first, memory-minimising schedule instead, under which they run side by
  side less often, but not never: XLA:CPU still runs independent instructions at
  once (``representation_information`` hung with the flag in effect), so the math
  modules also hand LAPACK one matrix at a time (``per_matrix``), which cannot
  block. ``import sslit`` already applies it (``sslit.SERIAL_LAPACK_FLAG``);
  this function is for code that rebuilt ``XLA_FLAGS`` since. Like
  ``set_cpu_device_count``, only effective before the backend starts; a no-op on
  jaxlib >= 0.11, and when ``XLA_FLAGS`` already names the option (the user's
  choice wins).

  Returns:
    True if the option is now in ``XLA_FLAGS`` (set here or before), False otherwise.
  """
  import sslit  # pylint: disable=g-import-not-at-top
  flags = os.environ.get("XLA_FLAGS", "")
  if sslit._FLAG_NAME in flags:  # pylint: disable=protected-access
    return True
  if not sslit._jaxlib_affected() or _backend_started():  # pylint: disable=protected-access
    return False
  os.environ["XLA_FLAGS"] = (flags + " " + sslit.SERIAL_LAPACK_FLAG).strip()
  return True


def per_matrix(f: Callable[..., Any], *xs: Any) -> Any:
  """``vmap(f)(*xs)`` computed one item at a time: each LAPACK call sees one matrix.

  Why: on jaxlib 0.10 a LAPACK kernel (Cholesky, eigh, SVD, triangular solve)
  called on a batch whose work exceeds about 2·10⁵ flops schedules ALL its pieces
  on XLA's CPU intra-op thread pool and blocks its own pool thread until they are
  done (``ParallelBatchMap`` in jaxlib's ``cpu/lapack_kernels.cc``). Two such calls
  in flight at once (independent branches of one program, a loop beside its
  remainder, the programs of several CPU devices under ``shard_map``) occupy both
  threads of a 2-core machine's pool, and nothing is left to run the pieces they
  wait for: the program never returns, at 0 % CPU. XLA's scheduler option
  (``serialize_cpu_lapack``) changes the order of instructions, not which of them
  run side by side, so it does not exclude this. A call on one matrix runs inline
  on its thread and never waits for the pool, whatever else runs beside it.

  ``f`` is traced once for one item (``jax.lax.map``, a loop over axis 0), so keep
  it to the linear algebra and do the rest batched around it; differentiable. Do
  not ``vmap`` a function that calls this: under ``vmap`` the loop body is batched
  again. Used by ``cpa``, ``mixture`` and ``estimators`` for every decomposition of
  a batch of matrices.

  Speed: jaxlib's CPU LAPACK kernels call SciPy's OpenBLAS, whose own threads
  synchronise inside every call; for one ``k × k`` matrix at a time (k in the
  hundreds) that costs more than it gains, and on a shared CPU it cost 3–20×
  (``bench/information.py``, docs/cpa.md). So the first use sets that OpenBLAS
  (SciPy's copy only; NumPy's and XLA's own threads are untouched) to one thread
  for the rest of the process, unless ``OPENBLAS_NUM_THREADS`` is set (the user's
  choice wins). ``scipy.linalg`` in the same process then runs single-threaded too.

  Args:
    f: function of one item of each of ``xs`` (their slices ``x[i]``).
    *xs: arrays (or pytrees) with a common leading axis ``[m, ...]``.

  Returns:
    ``f``'s outputs stacked along a new leading axis ``[m, ...]``.
  """
  _single_threaded_lapack_blas()
  return jax.lax.map(lambda args: f(*args), xs)


@functools.cache
def _single_threaded_lapack_blas() -> bool:
  """One thread for the OpenBLAS that jaxlib's CPU LAPACK kernels call (SciPy's).

  Returns:
    True if it was set here.
  """
  if "OPENBLAS_NUM_THREADS" in os.environ:
    return False
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    import glob  # pylint: disable=g-import-not-at-top
    import scipy  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
  for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*"))):
    try:
      setter = getattr(ctypes.CDLL(path), "scipy_openblas_set_num_threads", None)
    except OSError:
      continue
    if setter is not None:
      setter(1)
      return True
  return False


def shard_rows(body: Callable[..., Any], mesh: Mesh | None, rows: Any,
               *replicated: Any, pad: bool = False, name: str = "rows") -> Any:
  """``body(rows, *replicated)`` with axis 0 of ``rows`` split over ``mesh``'s devices.

  The per-device form of the math modules' batch work (per-sample slopes over an
  evaluation set, the pair passes of the mixture bounds): ``shard_map`` over all
  mesh axes, each device running ``body`` on its own consecutive rows of every leaf
  of ``rows`` and a full copy of ``replicated``; the results (axis 0 of every
  output leaf) are concatenated in device order, so ``body`` must treat rows
  independently. ``check_vma=False``: a body may carry fresh (unvarying) buffers
  through a loop, e.g. a chunked map's preallocated result.

  Args:
    body: ``body(rows_block, *replicated)`` -> pytree with rows along axis 0.
    mesh: a ``jax.sharding.Mesh``, or None to call ``body`` as it is.
    rows: pytree of arrays sharing axis 0, ``[m, ...]``.
    *replicated: arrays every device receives whole.
    pad: if True, ``m`` need not divide the mesh size: the rows are padded with
      zeros (so index arrays pad with index 0) and the padding's results dropped.
    name: what ``rows`` is called in the error for an indivisible ``m``.

  Returns:
    ``body``'s output, ``[m, ...]`` leaves.

  Raises:
    ValueError: ``m`` not divisible by the mesh size and ``pad`` is False.
  """
  if mesh is None:
    return body(rows, *replicated)
  size = mesh.devices.size
  m = jax.tree.leaves(rows)[0].shape[0]
  if m % size and not pad:
    raise ValueError(
        f"{name}'s batch size {m} must be divisible by the mesh size {size} "
        f"(mesh shape {dict(mesh.shape)}) to split it across devices.")
  if m % size:
    rows = jax.tree.map(
        lambda a: jnp.concatenate([a, jnp.zeros((-m % size,) + a.shape[1:], a.dtype)]),
        rows)
  spec = PartitionSpec(tuple(mesh.axis_names))
  run = jax.shard_map(body, mesh=mesh,
                      in_specs=(spec,) + (PartitionSpec(),) * len(replicated),
                      out_specs=spec, check_vma=False)
  out = run(rows, *replicated)
  return jax.tree.map(lambda a: a[:m], out) if m % size else out


# XLA:CPU hands parts of a program to the YNNPACK library ("library fusions"). For
# a training step, jaxlib 0.10's default also gives it the convolutions and the
# element-wise fusions. Measured on the 2-core CPU (bench/RESULTS_train_step.md):
# YNNPACK's convolution gradients for the ConvNet's 16- to 64-channel layers ran on
# one core, 1.5-2x slower than XLA's own (Eigen) convolutions, and its element-wise
# fusions materialised broadcast constants. Keeping only its dots and reductions
# made the ConvNet's VICReg step 19 % faster and ResNet-18's 16 %, and left the MLP
# step as it was; forward-only programs (evaluation) did not change.
CPU_STEP_LIBRARY_FUSIONS = ("INDIVIDUAL_DOT", "REDUCE")
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def step_compiler_options(mesh: Mesh | None = None) -> dict[str, str]:
  """XLA compiler options for jitting a training step on ``mesh``'s devices.

  On CPU: YNNPACK library fusions limited to ``CPU_STEP_LIBRARY_FUSIONS`` (see the
  comment above it); pass the result as ``jax.jit(..., compiler_options=...)``.
  Empty (XLA's defaults) on other platforms, when ``XLA_FLAGS`` already chooses
  the YNNPACK fusions (``--xla_cpu_experimental_ynn_fusion_type=...``: that is
  also how to opt out), or when this jaxlib does not know the option.

  Args:
    mesh: the step's mesh (default: all devices).

  Returns:
    A new dict of option name to value; possibly empty.
  """
  devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
  if any(d.platform != "cpu" for d in devices):
    return {}
  if _YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return {}
  return dict(_cpu_step_options())


@functools.cache
def _cpu_step_options() -> tuple[tuple[str, str], ...]:
  options = {_YNN_OPTION: ",".join(f"LIBRARY_FUSION_TYPE_{t}"
                                   for t in CPU_STEP_LIBRARY_FUSIONS)}
  try:  # an older or newer jaxlib may not know the option or a fusion type
    x = jax.device_put(np.zeros(2, np.float32), jax.local_devices(backend="cpu")[0])
    jax.jit(lambda x: x + 1).lower(x).compile(compiler_options=options)
  except Exception:  # pylint: disable=broad-except
    return ()
  return tuple(options.items())


def _backend_started() -> bool:
  """Whether JAX has started an XLA backend (``sslit._backend_started``: one place)."""
  import sslit  # pylint: disable=g-import-not-at-top
  return sslit._backend_started()  # pylint: disable=protected-access


def initialize(*, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None,
               cpu_collectives: str | None = "gloo") -> None:
  """Start multi-host JAX (``jax.distributed.initialize``) if more than one process.

  With ``num_processes`` in (None, 1) and no coordinator, this is a no-op, so a
  single-process run never needs a coordinator. On CPU, cross-process
  collectives need an implementation (``"gloo"``); it is set before the call.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: total number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    local_device_ids: devices this process owns (default: all visible).
    cpu_collectives: CPU collectives implementation, or None to leave as is.
  """
  if coordinator_address is None and num_processes in (None, 1):
    return
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, local_device_ids=local_device_ids)


def process_index() -> int:
  """This process's index (0 on a single host)."""
  return jax.process_index()


def process_count() -> int:
  """Number of processes (1 on a single host)."""
  return jax.process_count()


def make_mesh(devices: Sequence[Any] | None = None, *, axis_name: str = DATA_AXIS) -> Mesh:
  """A one-dimensional data-parallel mesh over all (or the given) devices.

  Args:
    devices: devices to use; default ``jax.devices()`` (every process's devices).
    axis_name: the mesh axis name batches are sharded along.

  Returns:
    A ``Mesh`` of shape ``(len(devices),)`` with an ``Auto`` axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device.")
  return jax.make_mesh((len(devices),), (axis_name,), axis_types=(AxisType.Auto,),
                       devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading axis split over the mesh's data axis."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and state: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Raise ``ValueError`` unless the global batch divides over devices and processes.

  Args:
    batch_size: global batch size (all processes together).
    mesh: the data-parallel mesh.
  """
  n = mesh.devices.size
  if batch_size <= 0 or batch_size % n:
    raise ValueError(
        f"batch_size={batch_size} is not divisible by the number of devices ({n}); "
        f"choose a multiple of {n}, e.g. {max(n, batch_size - batch_size % n)}, or "
        f"change the device count.")
  p = jax.process_count()
  if batch_size % p:
    raise ValueError(f"batch_size={batch_size} is not divisible by the number of "
                     f"processes ({p}).")


def process_local_batch_size(batch_size: int, mesh: Mesh) -> int:
  """The part of a global batch that this process reads and places.

  Args:
    batch_size: global batch size.
    mesh: the data-parallel mesh.

  Returns:
    ``batch_size * local_devices_in_mesh / devices_in_mesh``.
  """
  check_batch_size(batch_size, mesh)
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  return batch_size * local // mesh.devices.size


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Place a pytree of host arrays on the mesh, split along the leading axis.

  On one process the arrays are the global batch; on several, each process
  passes its own local part (``process_local_batch_size`` rows) and the global
  array is assembled with ``jax.make_array_from_process_local_data``.

  Args:
    batch: pytree of arrays with a common leading (batch) dimension ``[b, ...]``.
    mesh: the data-parallel mesh.

  Returns:
    The same pytree of ``jax.Array`` sharded along the mesh's data axis.
  """
  sharding = data_sharding(mesh)
  leaves = jax.tree.leaves(batch)
  if not leaves:
    return batch
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every leaf of batch must share a leading batch dimension, got "
                     f"shapes {[np.shape(x) for x in leaves]}.")
  (b,) = sizes
  if jax.process_count() == 1:
    n = mesh.devices.size
    if b % n:
      raise ValueError(
          f"batch size {b} is not divisible by the number of devices ({n}); "
          f"choose a multiple of {n}.")
    return jax.device_put(batch, sharding)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  if b % local_devices:
    raise ValueError(f"process-local batch size {b} is not divisible by this "
                     f"process's device count ({local_devices}).")
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place a pytree on every device of the mesh (parameters, optimiser state).

  Every process must pass the same values. On one process this is a
  ``device_put``; across processes each process fills its own devices.

  Args:
    tree: pytree of arrays (host or device).
    mesh: the mesh.

  Returns:
    The pytree of fully replicated ``jax.Array``.
  """
  sharding = replicated_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      data = put(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """Fetch a pytree of (replicated or sharded) arrays as NumPy on every process.

  Replicated arrays are read from a local copy; arrays sharded across processes
  are all-gathered first.

  Args:
    tree: pytree of ``jax.Array``.

  Returns:
    The pytree of ``np.ndarray``.
  """
  def get(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)
