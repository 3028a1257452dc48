"""The curvature engine: the only package that differentiates.

It owns parameters and layers, the loss as a pure function of a parameter dict, micro-batching
with the bⱼ/N weighting, device and dtype.
"""
