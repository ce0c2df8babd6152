"""Keep tokenizers loadable after KerasHub saves them.

``Llama3Tokenizer.get_config`` drops its special tokens, so a preset made from
a Hugging Face folder whose vocabulary lacks Llama 3's defaults (e.g.
``<|end_header_id|>``) cannot be loaded again. hubquant gives such a tokenizer
a registered subclass that saves and restores them.
"""

from __future__ import annotations

import contextlib

import keras
from keras_hub.models import Llama3Backbone, Llama3Tokenizer

from hubquant.registered import hubquant_class


@keras.saving.register_keras_serializable("hubquant", "Llama3Tokenizer")
class HubquantLlama3Tokenizer(Llama3Tokenizer):
    # Only quantized presets pick this class; plain Llama 3 presets keep theirs.
    backbone_cls = hubquant_class(Llama3Backbone)

    def __init__(self, *args, misc_special_tokens=None, **kwargs):
        if misc_special_tokens is not None:
            kwargs["misc_special_tokens"] = set(misc_special_tokens)
        super().__init__(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        misc = [
            getattr(self, name)
            for name in self._special_token_attrs
            if name.startswith("special_token_")
        ]
        config.update(
            bos_token=self.start_token,
            eos_token=self.end_token,
            misc_special_tokens=sorted(misc),
        )
        return config


def keep_special_tokens(model) -> None:
    """Swap a Llama 3 tokenizer for the subclass that saves its special tokens."""
    preprocessor = getattr(model, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if type(tokenizer) is Llama3Tokenizer:
        tokenizer.__class__ = HubquantLlama3Tokenizer


@contextlib.contextmanager
def as_keras_hub_class(tokenizer):
    """Present hubquant's tokenizer subclass as KerasHub's own while exporters
    look it up by class name."""
    swapped = type(tokenizer) is HubquantLlama3Tokenizer
    if swapped:
        tokenizer.__class__ = Llama3Tokenizer
    try:
        yield tokenizer
    finally:
        if swapped:
            tokenizer.__class__ = HubquantLlama3Tokenizer
