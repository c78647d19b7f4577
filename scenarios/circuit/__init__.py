"""Transistor-level comparison of the spiking core: sky130 netlists, the ngspice runner, the
characterisation that fits the bottom-up model, and the model-vs-circuit comparison."""
