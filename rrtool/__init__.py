"""rrtool: make a language model forget a target without a curated forget set.

Importing this package must stay cheap: `rrtool --help` may not pull in torch,
transformers or mlflow, so heavy imports live inside the functions that need them.
"""

__version__ = "0.1.0"
