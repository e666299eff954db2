"""LoRA fine-tuning on MLX: SFT and DPO (Zephyr's dSFT + dDPO recipe), evaluate, fuse.

mlx-lm supplies the LoRA layers, the adapter format and the optimizers; this
package adds what mlx-lm lacks: preference data, DPO losses with a reference that
is the same weights with the adapters off (cached on disk), resumable runs, and
metrics named as TRL names them.
"""
