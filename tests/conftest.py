"""Test configuration: two fake CPU devices, set before JAX initialises.

The sharded-equals-unsharded tests need more than one device; on a CPU-only
machine XLA can split the host into virtual devices, but only if the flag is set
before the backend starts, i.e. here, before anything imports jax.
"""

import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=2"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ["JAX_PLATFORMS"] != "cpu":
  # On an accelerator (JAX_PLATFORMS=cuda ...): float32 matmuls run as TF32 by default
  # on GPUs (bfloat16 passes on TPUs), while the tests compare float32 results with
  # float64 oracles at float32 tolerances (README.md, "Precision on accelerators");
  # and bitwise resume needs deterministic reductions. Environment variables, so the
  # tests' worker processes inherit them.
  os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
  os.environ["XLA_FLAGS"] += " --xla_gpu_deterministic_ops=true"
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

# XLA's compiled programs, kept on disk for the whole run: many tests (and the CLI
# processes they start, which inherit the environment) compile the same small
# training steps, and a cache hit is much cheaper than a compile on a 2-core CPU.
# One directory per pytest run, made by the first process (the xdist controller,
# whose environment the workers inherit) and removed when that process ends; a
# directory the user set is used as it is and kept. JAX writes an entry in place, so
# a process may read one that another is still writing (seen once in a run of the
# suite): JAX then warns and compiles, with the same result; that warning is ignored
# here (setup.cfg) and in the processes the tests start (PYTHONWARNINGS).
_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="sslit-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  _IGNORE = "ignore:Error reading persistent compilation cache entry:UserWarning"
  os.environ["PYTHONWARNINGS"] = ",".join(
      w for w in (os.environ.get("PYTHONWARNINGS"), _IGNORE) if w)

from sslit import parallel  # noqa: E402  (imports jax; the backend starts later)

# jaxlib < 0.11: batched LAPACK kernels can deadlock a 2-thread CPU pool (see
# parallel.serialize_cpu_lapack); the CPA tests and experiments run them.
parallel.serialize_cpu_lapack()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Start the backend now, with the flags above: a test that runs the CLI first (its
# configs ask for 1 CPU device) must not change the device count of the others.
jax.devices()


@pytest.fixture
def fast_compile():
  """Fewer XLA optimisation passes: these tests check that fit runs, not speed."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def x64():
  """Run the test body with 64-bit floats enabled (float64 oracles)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng():
  """A NumPy generator with a fixed seed."""
  return np.random.default_rng(0)


def pytest_unconfigure(config):
  """Remove the run's compilation cache once the process that made it ends."""
  del config
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
