"""The shape of a llama-architecture model: the hyperparameters its GGUF header records, shared by the embedded
tiny model (``model.TinyLlamaSpec``) and the trained addition model (``addition.DEFAULT_CONFIG``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    """Sizes of a llama model. Row widths are multiples of 256 so Q4_K quantises every tensor."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    context_length: int
    rms_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
