"""The convert op: change the layout (names and scale metadata only; factor bytes are unchanged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from adapterctl.layouts.registry import writable
from adapterctl.layouts.write import check_convertible
from adapterctl.ops.base import Op, Params

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter


class ConvertParams(Params):
    to: Literal[writable()]  # the writable layouts of layouts/registry.py


class Convert(Op):
    name = "convert"
    Params = ConvertParams

    def apply(self, adapter: "Adapter", params: ConvertParams) -> dict:
        check_convertible(adapter.manifest.modules, params.to, lycoris=adapter.read.lycoris,
                          unmapped=adapter.read.unmapped)
        return {"layout": params.to}

    def record(self, adapter: "Adapter", params: ConvertParams) -> dict:
        return {"from": adapter.layout, "to": params.to}
