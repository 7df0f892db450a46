"""The generator a spec or a caller asks for, over a loaded model (``hf`` or ``vllm``).

Apart from :mod:`rrtool.generation.base` (the protocol the backends implement), so the
protocol imports no backend and no backend imports its own factory.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from rrtool.errors import UserError
from rrtool.generation.base import Generator, vllm_missing_message

if TYPE_CHECKING:
    from rrtool.models import LoadedModel
    from rrtool.spec import GenerationSpec


def make_generator(backend: str, handle: LoadedModel, *, batch_size: int, **kw: Any) -> Generator:
    """The backend named by ``generation.backend`` over a loaded model.

    ``hf`` wraps the loaded model itself (so LoRA edits made to it are seen). ``vllm`` starts
    its own engine from the checkpoint behind ``handle`` and schedules its own batches
    (``batch_size`` is not used there); ``kw`` goes to
    :class:`~rrtool.generation.vllm.VLLMGenerator`.
    """
    if backend == "hf":
        from rrtool.generation.hf import HFGenerator

        return HFGenerator(handle.model, handle.tokenizer, batch_size=batch_size, **kw)
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UserError(vllm_missing_message())
        from rrtool.generation.vllm import VLLMGenerator

        source = str(handle.checkpoint) if handle.checkpoint else handle.resolved.source
        kw.setdefault("embedding_weight", handle.model.get_input_embeddings().weight)
        return VLLMGenerator(source, **kw)
    raise UserError(f"generation.backend: unknown backend `{backend}` (expected `hf` or `vllm`)")


def generator_for(spec: GenerationSpec, handle: LoadedModel) -> Generator:
    """The generator a spec's ``generation`` section asks for (engine options for vLLM)."""
    engine: dict[str, Any] = {}
    if spec.backend == "vllm":
        engine = {"tensor_parallel_size": spec.tensor_parallel_size, **spec.engine_options}
    else:
        engine = {"compute_dtype": spec.compute_dtype}
    return make_generator(spec.backend, handle, batch_size=spec.batch_size, **engine)
