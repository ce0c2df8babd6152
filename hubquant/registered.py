"""Registered subclasses that make a quantized model survive save and load.

A KerasHub backbone's config is only its constructor arguments, so swapped
layers would be forgotten on reload. hubquant gives the backbone (and its task)
a registered subclass of its own class, same name, package ``hubquant``: its
``get_config`` adds the Plan and its ``from_config`` builds the backbone as
usual and then re-applies the Plan as a quantized skeleton before Keras loads
the weights. Subclasses exist for every KerasHub backbone and task class, so
artefacts load in a fresh process after ``import hubquant``.
"""

from __future__ import annotations

import inspect

import keras
import keras_hub
from keras.dtype_policies import DTypePolicyMap, QuantizedDTypePolicy
from keras_hub.models import Backbone, Task

from hubquant import keras_internals as internals
from hubquant._version import __version__
from hubquant.layers.lora import lora_state, restore_lora
from hubquant.paths import backbone_of
from hubquant.plan import Plan
from hubquant.surgery import build_skeleton

_SUBCLASSES: dict[type, type] = {}


class HubquantBackboneMixin:
    """Adds the Plan to the backbone's config and re-applies it on load."""

    hubquant_plan: Plan

    def get_config(self):
        # Hand KerasHub the Plan's policy map: its own map building fails when
        # two quantized layers share a path (SmolLM3 names every o_proj alike).
        with internals.dtype_policy_as(self, dtype_map(self.hubquant_plan)):
            config = super().get_config()
        config.update(dropped_arguments(self, config))

        config["hubquant"] = {"plan": self.hubquant_plan.to_dict(), "version": __version__}
        if adapters := lora_state(self):
            config["hubquant"]["lora"] = adapters
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        saved = config.pop("hubquant")
        plan = Plan.from_dict(saved["plan"])
        dtype = config.get("dtype")
        if dtype is None or _is_policy_map(dtype):
            # Expert banks get their quantized policy from build_skeleton: their
            # KerasHub classes have no quantized call to build the graph with.
            config["dtype"] = dtype_map(plan, banks=False)
        with internals.deferred_variables():  # float matrices the Plan replaces never allocate
            backbone = super().from_config(config)
        build_skeleton(backbone, plan)
        internals.initialize_deferred(backbone)
        object.__setattr__(backbone, "hubquant_plan", plan)
        restore_lora(backbone, saved.get("lora"))
        return backbone


def constructor_arguments(cls: type) -> list[str]:
    """The named parameters of ``cls.__init__`` (no ``self``, ``*args``, ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def dropped_arguments(backbone, config: dict) -> dict:
    """Constructor arguments the backbone's own ``get_config`` leaves out, read back
    from the attributes it keeps (KerasHub 0.32's ``LlamaBackbone`` drops
    ``tie_word_embeddings``, so a tied Llama would reload untied)."""
    base = getattr(type(backbone), "_hubquant_base", type(backbone))
    return {
        name: getattr(backbone, name)
        for name in constructor_arguments(base)
        if name not in config and hasattr(backbone, name)
    }


def _is_policy_map(dtype) -> bool:
    """The saved policy map (serialized or not), as opposed to a dtype a user passed."""
    if isinstance(dtype, dict):
        return dtype.get("class_name") == "DTypePolicyMap"
    return isinstance(dtype, DTypePolicyMap)


def dtype_map(plan: Plan, banks: bool = True) -> DTypePolicyMap:
    """Float default for the backbone, a quantized policy per planned layer
    (expert banks included only with ``banks``)."""
    policies = {
        entries[0].path: QuantizedDTypePolicy(entries[0].mode, entries[0].source_dtype)
        for entries in plan.layers().values()
        if banks or entries[0].matrix in ("kernel", "embeddings", "reverse")
    }
    return DTypePolicyMap(default_policy=plan.dtype, policy_map=policies)


def hubquant_class(base: type) -> type:
    """The registered hubquant subclass of a KerasHub backbone or task class."""
    if getattr(base, "_hubquant_base", None) is not None:
        return base
    if base not in _SUBCLASSES:
        if issubclass(base, Backbone):
            attrs = {}
            bases = (HubquantBackboneMixin, base)
        else:
            attrs = {"backbone_cls": hubquant_class(base.backbone_cls)}
            bases = (base,)
        attrs.update(__module__=__name__, _hubquant_base=base, __doc__=base.__doc__)
        cls = type(base.__name__, bases, attrs)
        keras.saving.register_keras_serializable("hubquant", base.__name__)(cls)
        _SUBCLASSES[base] = cls
    return _SUBCLASSES[base]


def mark_quantized(model, plan: Plan) -> None:
    """Give a model (task or backbone) and its backbone their hubquant classes."""
    backbone = backbone_of(model)
    backbone.__class__ = hubquant_class(type(backbone))
    object.__setattr__(backbone, "hubquant_plan", plan)
    if isinstance(model, Task):
        model.__class__ = hubquant_class(type(model))


def register_all() -> None:
    """Register subclasses for every KerasHub backbone and task class."""
    classes = [c for c in vars(keras_hub.models).values() if inspect.isclass(c)]
    for cls in classes:
        if issubclass(cls, Backbone) and cls is not Backbone:
            hubquant_class(cls)
    for cls in classes:
        backbone_cls = getattr(cls, "backbone_cls", None)
        if issubclass(cls, Task) and inspect.isclass(backbone_cls):
            if issubclass(backbone_cls, Backbone) and backbone_cls is not Backbone:
                hubquant_class(cls)
