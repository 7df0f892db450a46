"""Generation backends behind one interface (:class:`Generator`): ``hf`` and, optionally, ``vllm``.

Importing this package is cheap; torch and transformers load with the ``hf`` backend.
"""

from rrtool.generation.base import (
    Completion,
    GenerationStats,
    Generator,
    Prompt,
    SamplingParams,
    encode_prompt,
    format_prompt,
)
from rrtool.generation.factory import make_generator

__all__ = [
    "Completion",
    "GenerationStats",
    "Generator",
    "Prompt",
    "SamplingParams",
    "encode_prompt",
    "format_prompt",
    "make_generator",
]
