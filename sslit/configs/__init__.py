"""The configs that ship with sslit: ``default`` (the main job) and ``smoke``.

Each is a Python file with ``get_config() -> ml_collections.ConfigDict``; derived
configs import their base as a module (``from sslit.configs import default``), the
way Flax's example configs do. The paper experiments' configs live in the
repository's ``experiments/configs/`` and import these the same way. Config files
import only ml_collections (never jax), so the command can set device options
before JAX starts.
"""
