"""Stages of the threat model, each with its run directory: align -> finetune (the attack) -> evaluate."""
