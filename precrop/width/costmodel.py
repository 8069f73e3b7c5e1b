"""The layer table: an exact, pure-data cost model of a CNN as a function of its channel widths.

A network is described by its *channel groups* (sets of channels that must keep the same width
because they are coupled: a residual stream, a depthwise conv and its producer, ...) and its
*layers* (every conv/linear layer, with the group(s) it reads and the group it writes).
Parameter and MAC counts are then closed-form functions of one width per group:

    conv      params = w_out * (w_in / groups) * kh * kw  (+ w_out bias)    MACs = that weight * H_out * W_out
    depthwise params = w * kh * kw (+ w bias)                               MACs = w * kh * kw * H_out * W_out
    linear    params = w_out * w_in * in_per_channel (+ w_out bias)         MACs = that weight * positions
    norm      params = per_channel * w                                      (no MACs)

MACs count multiply-accumulates of conv and linear layers only (the convention of
``torch.utils.flop_counter.FlopCounterMode``, which reports 2 x MACs and ignores biases and norms).

This module imports the standard library only, never torch: the convex programs build on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1
INPUT_GROUP = "input"
LOGITS_GROUP = "logits"

LayerKind = Literal["conv", "linear", "channel_pad"]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of coupled channels that share one width; `fixed` groups never change width."""

    name: str
    width: int
    fixed: bool = False


@dataclass(frozen=True)
class Layer:
    """One conv, linear or zero-cost channel-pad layer, described by the groups it touches.

    `in_groups` lists the concatenated input segments in order (usually one group).
    `in_per_channel` is the number of input features per input channel (a linear layer after a
    flatten of a C x H x W map reads H*W features per channel). `positions` is the number of output
    positions per sample the weights are applied at (H_out * W_out for a conv). `gate` marks a layer on a
    gate branch: everything it computes reaches the output only through a sigmoid-like gate that scales
    another tensor (a squeeze-excitation block's two convs).
    """

    name: str
    kind: LayerKind
    in_groups: tuple[str, ...]
    out_group: str
    kernel: tuple[int, int] = (1, 1)
    conv_groups: int = 1
    depthwise: bool = False
    bias: bool = False
    out_hw: tuple[int, int] = (1, 1)
    in_per_channel: int = 1
    gate: bool = False

    @property
    def positions(self) -> int:
        """Output positions per sample (H_out * W_out)."""
        return self.out_hw[0] * self.out_hw[1]

    @property
    def kernel_area(self) -> int:
        """kh * kw."""
        return self.kernel[0] * self.kernel[1]

    def in_width(self, widths: Mapping[str, int]) -> int:
        """Input channels of this layer at the given group widths."""
        return sum(widths[g] for g in self.in_groups)

    def weight_count(self, widths: Mapping[str, int]) -> int:
        """Weights (no bias) at the given group widths; also the MACs per output position."""
        if self.kind == "channel_pad":
            return 0
        w_out = widths[self.out_group]
        if self.depthwise:
            return w_out * self.kernel_area
        w_in = self.in_width(widths) * self.in_per_channel
        return w_out * (w_in // self.conv_groups) * self.kernel_area

    def params(self, widths: Mapping[str, int]) -> int:
        """Parameters (weights plus bias) at the given group widths."""
        bias = widths[self.out_group] if self.bias and self.kind != "channel_pad" else 0
        return self.weight_count(widths) + bias

    def macs(self, widths: Mapping[str, int]) -> int:
        """Multiply-accumulates per sample at the given group widths."""
        return self.weight_count(widths) * self.positions


@dataclass(frozen=True)
class NormTerm:
    """A per-channel parameter owner (BatchNorm, LayerNorm, ...): params = per_channel * width.

    `groups` lists the channel groups it normalizes (more than one after a concatenation).
    """

    name: str
    groups: tuple[str, ...]
    per_channel: int

    def width(self, widths: Mapping[str, int]) -> int:
        """Channels normalized at the given group widths."""
        return sum(widths[g] for g in self.groups)


@dataclass(frozen=True)
class Cost:
    """Parameter and MAC counts of one model (MACs per sample)."""

    params: int
    macs: int


@dataclass(frozen=True)
class LayerTable:
    """Pure-data description of a CNN's channel groups and layers, with an exact cost function."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]
    norms: tuple[NormTerm, ...] = ()
    fixed_params: int = 0
    schema_version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate channel group names in layer table of {self.arch}")
        known = set(names)
        for layer in self.layers:
            for g in (*layer.in_groups, layer.out_group):
                if g not in known:
                    raise ValueError(f"layer {layer.name} refers to unknown group {g!r}")
        for norm in self.norms:
            for g in norm.groups:
                if g not in known:
                    raise ValueError(f"norm {norm.name} refers to unknown group {g!r}")

    # ----- widths -------------------------------------------------------------------------
    def group(self, name: str) -> ChannelGroup:
        """The group called `name` (KeyError if absent)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def base_widths(self) -> dict[str, int]:
        """Width of every group in the dense model."""
        return {g.name: g.width for g in self.groups}

    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        """Groups whose width may change (not the input, the logits or other fixed groups)."""
        return tuple(g for g in self.groups if not g.fixed)

    def full_widths(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Complete a partial width assignment with base widths, validating every entry."""
        full = self.base_widths
        for name, width in widths.items():
            if name not in full:
                raise ValueError(f"unknown channel group {name!r} for {self.arch}")
            group = self.group(name)
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise ValueError(f"width of group {name!r} must be a positive integer, got {width!r}")
            if group.fixed and width != group.width:
                raise ValueError(f"group {name!r} is fixed at width {group.width}")
            full[name] = width
        return full

    def layers_touching(self, group: str) -> int:
        """How many conv/linear layers read or write `group`."""
        return sum(
            1
            for layer in self.layers
            if layer.kind != "channel_pad" and (group == layer.out_group or group in layer.in_groups)
        )

    # ----- cost ---------------------------------------------------------------------------
    def cost(self, widths: Mapping[str, int] | None = None) -> Cost:
        """Exact params and MACs of the model built at `widths` (missing groups stay at base)."""
        full = self.full_widths(widths or {})
        params = self.fixed_params + sum(layer.params(full) for layer in self.layers)
        params += sum(n.per_channel * n.width(full) for n in self.norms)
        macs = sum(layer.macs(full) for layer in self.layers)
        return Cost(params=params, macs=macs)

    # ----- serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    def to_json(self) -> str:
        """Serialize to a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerTable:
        """Inverse of `to_dict`."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"layer table schema version {version!r} is not {SCHEMA_VERSION}")
        return cls(
            arch=str(data["arch"]),
            input_shape=_int_tuple3(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            groups=tuple(ChannelGroup(**g) for g in data["groups"]),
            layers=tuple(_layer_from_dict(entry) for entry in data["layers"]),
            norms=tuple(
                NormTerm(str(n["name"]), tuple(str(g) for g in n["groups"]), int(n["per_channel"]))
                for n in data["norms"]
            ),
            fixed_params=int(data["fixed_params"]),
        )

    @classmethod
    def from_json(cls, text: str) -> LayerTable:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _int_tuple3(values: Any) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return (a, b, c)


def _int_pair(values: Any) -> tuple[int, int]:
    a, b = (int(v) for v in values)
    return (a, b)


def _layer_from_dict(entry: Mapping[str, Any]) -> Layer:
    kind = entry["kind"]
    if kind not in ("conv", "linear", "channel_pad"):
        raise ValueError(f"unknown layer kind {kind!r}")
    return Layer(
        name=str(entry["name"]),
        kind=kind,
        in_groups=tuple(str(g) for g in entry["in_groups"]),
        out_group=str(entry["out_group"]),
        kernel=_int_pair(entry["kernel"]),
        conv_groups=int(entry["conv_groups"]),
        depthwise=bool(entry["depthwise"]),
        bias=bool(entry["bias"]),
        out_hw=_int_pair(entry["out_hw"]),
        in_per_channel=int(entry["in_per_channel"]),
        gate=bool(entry.get("gate", False)),  # tables written before gates were traced have none
    )
