"""The benchmark harness: zephyr-local against mlx-lm, naive designs and the hardware limit.

Every case runs both sides in the same process, alternating, on the same model and
prompt, and reports ratios. `cases.py` registers the cases (name, modes, function);
`harness.run` drives them and writes the results.
"""
