"""From a thick volume to a thin one: devices and memory, the sliding-window predictor, the fallback
to smaller tiles or the CPU, slice resampling and interpolation, the consistency check, the output
plan and one study's run. Imports `models` and the core's top-level modules."""
