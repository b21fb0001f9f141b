"""Splatsmith's compute backend: the ZeroMQ server, jobs, renderers, teachers and pipelines.

Never imports bpy. Runs on CUDA when available, on the CPU otherwise.
"""
__version__ = "0.1.0"
