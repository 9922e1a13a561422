"""Sharing adapters through a Hugging Face Hub: ``push`` (upload with a generated model card),
``pull`` (download, verified by sha256, staged, with an origins record) and ``sync`` (reproduce a
library from its lock file).

huggingface_hub is imported only inside this package, and only when a function here runs
(``_client.hub()``), so that ``inspect``/``validate`` never pay for it. The endpoint is the
standard ``HF_ENDPOINT`` (read at call time and passed explicitly), the token is ``--token``,
``HF_TOKEN`` or the saved login, and the cache is huggingface_hub's (``HF_HOME``/``HF_HUB_CACHE``),
so ``HF_HUB_OFFLINE=1`` works once a file has been pulled.
"""
