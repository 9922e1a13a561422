"""Plans of branches over several sources: where each output branch's factors come from."""
