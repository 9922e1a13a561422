"""Low-rank math on LoRA branches in factored form (numpy only); see factored.py."""

from adapterctl.lowrank.factored import Factored, concat, dynamic_rank, effective_rank

__all__ = ["Factored", "concat", "dynamic_rank", "effective_rank"]
