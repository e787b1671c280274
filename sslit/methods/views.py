"""The all-views method: ``loss_fn(z [m, n, k], *, key)`` on every view at once.

``z`` stacks one embedding (``Settings.embedding``, ``"proj"``) of each of the
``m = 2 + V`` views, the two global views first, then the ``V`` local crops
(``FitOptions.local_crops``); ``key`` is a typed key of the step, distinct from
the augmentation's, for losses that draw random numbers (LeJEPA's projections).
No state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sslit.methods.base import Method, StepOutputs, embedding_of

# Folded into the step's key, so the loss's draws differ from the augmentation's.
_LOSS_KEY = 0x5EED


def _loss(o: StepOutputs):
  z = jnp.stack([embedding_of(out, o.settings.embedding) for out in o.outs])
  return o.loss_fn(z, key=jax.random.fold_in(o.key, _LOSS_KEY))


VIEWS = Method(name="views", loss=_loss)
