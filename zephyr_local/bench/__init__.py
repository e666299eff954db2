"""The benchmark harness: zephyr-local against mlx-lm, naive designs and the hardware limit.

Every case runs both sides in the same process, alternating, on the same model and
prompt, and reports ratios. `harness.run` drives the cases and writes the results.
"""
