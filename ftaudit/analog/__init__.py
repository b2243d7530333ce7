"""The analog forward pipeline: DAC, ADC, read noise, tiles and weight scaling.

``ForwardPipeline`` holds the settings; ``analog_runner`` (ONNX models) calibrates the ranges
and returns a runner whose graph quantises, tiles and adds read noise around every selected
crossbar op. Torch is not imported here, nor ONNX until a runner is built.
"""

from ftaudit.analog.options import WEIGHT_SCALINGS, ForwardPipeline, parse_tile_size

__all__ = ["WEIGHT_SCALINGS", "ForwardPipeline", "parse_tile_size"]
