"""Agents as pure functions over explicit state pytrees: ``bro`` and ``simbav2`` (one interface:
``init``/``init_seeds``, ``act``, ``update``/``update_n``, ``td_losses``, parameter counts)."""
