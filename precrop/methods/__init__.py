"""Allocation methods (SynExp and the baselines) behind one typed registry (see registry.py)."""
