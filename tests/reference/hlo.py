"""Reading compiled XLA programs: which LAPACK calls see a batch of matrices."""

from __future__ import annotations

import re

_CALL = re.compile(r"custom_call_target=\"(lapack_\w+)\"")
_BATCH = re.compile(r"num_batch_dims=\"(\d+)\"")
_SHAPE = re.compile(r"=\s*\(?\w+\[([\d,]*)\]")


def batched_lapack_calls(hlo_text: str) -> list[str]:
  """The LAPACK custom calls of an optimised HLO module that factor > 1 matrix.

  A call counts as batched when it declares batch dimensions whose sizes (the
  leading dimensions of its first result) multiply to more than one.
  """
  found = []
  for line in hlo_text.splitlines():
    call = _CALL.search(line)
    if not call:
      continue
    batch = _BATCH.search(line)
    dims = [int(v) for v in _SHAPE.search(line).group(1).split(",") if v]
    num = int(batch.group(1)) if batch else max(len(dims) - 2, 0)
    size = 1
    for v in dims[:num]:
      size *= v
    if size > 1:
      found.append(f"{call.group(1)} over {dims[:num]}")
  return found
