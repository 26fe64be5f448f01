"""The reliability suite (issue #8; docs/reliability.md): one test per promised behaviour, each able to
fail. Shares the training tests' small corpus, private cache and tiny recipes."""
from tests.training.conftest import _cache, corpus_dir, losses, tiny_config  # noqa: F401  (fixtures + helpers)
