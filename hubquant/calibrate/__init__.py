"""Calibrated quantization (GPTQ, AWQ): data, algorithms and the block-by-block run.

``hubquant.calibrate.run.calibrate_plan`` is the one entry point:
``api.apply_plan`` calls it when a Plan entry's algorithm is not ``rtn``.
"""
