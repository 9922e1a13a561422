"""Low-rank math on LoRA branches in factored form (numpy only); see factored.py."""

from adapterctl.lowrank.factored import Factored, concat, effective_rank

__all__ = ["Factored", "concat", "effective_rank"]
