"""Training configs: Python files with ``get_config() -> ml_collections.ConfigDict``.

Use with ``sslit train --config experiments/configs/<name>.py
[--config.<field>=<value> ...]``. Config files import only ml_collections (never
jax), so the command can set device options before JAX starts.
"""
