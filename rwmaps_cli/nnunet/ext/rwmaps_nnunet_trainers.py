"""Imported by nnU-Net as a top-level module when ``nnUNet_extTrainer`` names this folder."""

from rwmaps_cli.nnunet.trainers import (  # noqa: F401
    nnUNetTrainerCERW,
    nnUNetTrainerCERWGradual,
    nnUNetTrainerDiceRW,
    nnUNetTrainerDiceRWGradual,
    nnUNetTrainerRW,
    nnUNetTrainerRWOnTheFly,
)
