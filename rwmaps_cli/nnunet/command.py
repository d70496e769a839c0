"""``rwmaps nnunet``: train nnU-Net v2 with region-wise loss, and predict with the trained model.

Attach to the main CLI with ``main.add_command(nnunet)``.  Nothing here imports nnU-Net
until a command runs; without it each command says, in one line, which extra to install.
"""

from __future__ import annotations

import subprocess
import sys

import click

from . import EXTRA_HINT

# nnU-Net's predictor finds the trainer class by name to build the network.  Looking ours up
# first skips nnU-Net's scan, which imports every trainer module it ships (some need timm and
# torchvision, which a CPU-only torch may lack); other names fall back to nnU-Net's own search.
_PREDICT = ("import sys; import nnunetv2.inference.predict_from_raw_data as p; "
            "from rwmaps_cli.nnunet.trainers import trainer_class; "
            "p.recursive_find_trainer_class_by_name = trainer_class; "
            "sys.argv[0] = '{name}'; p.{fn}()")


class _Failed(click.ClickException):
    """One line, ``rwmaps: ...``, as every error line rwmaps prints; exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"rwmaps: {self.format_message()}", err=True)


def _require():
    from .train import NnUNetMissing, require_nnunet

    try:
        require_nnunet()
    except NnUNetMissing:
        raise _Failed(EXTRA_HINT) from None


@click.group("nnunet")
def nnunet():
    """Train nnU-Net v2 with Region-wise loss from precomputed maps (needs the nnunet extra).

    \b
    1. nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres
    2. rwmaps compute --input $nnUNet_preprocessed/DatasetID_Name/nnUNetPlans_3d_fullres
    3. rwmaps nnunet train ID 3d_fullres 0 --trainer nnUNetTrainerRW
    4. rwmaps nnunet predict -i imagesTs -o predictions -d ID -c 3d_fullres -f 0 -tr nnUNetTrainerRW
    """


@nnunet.command("train")
@click.argument("dataset")
@click.argument("configuration")
@click.argument("fold")
@click.option("--trainer", "-tr", default="nnUNetTrainerRW", show_default=True,
              help="nnUNetTrainerRW, nnUNetTrainerCERW, nnUNetTrainerDiceRW, nnUNetTrainerCERWGradual, "
                   "nnUNetTrainerDiceRWGradual, nnUNetTrainerRWOnTheFly (or any nnU-Net trainer).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default="cuda", show_default=True)
@click.option("-p", "--plans", default="nnUNetPlans", show_default=True, help="Plans identifier.")
@click.option("--continue", "continue_training", is_flag=True, help="Continue from the latest checkpoint.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs (nnU-Net: 1000).")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Training iterations per epoch (nnU-Net: 250).")
@click.option("--maps", type=click.Path(file_okay=False), default=None,
              help="Maps folder (default: the sibling <preprocessed folder>_rwmaps).")
@click.option("--no-validation", is_flag=True, help="Skip the final validation of the fold.")
def train_command(dataset, configuration, fold, trainer, device, plans, continue_training, epochs, iterations, maps,
                  no_validation):
    """Train DATASET CONFIGURATION FOLD with an RW trainer, as nnUNetv2_train would."""
    _require()
    from ..inputs.nnunet_preprocessed import PreprocessedError
    from .store import MapsFolderError
    from .train import train

    try:
        folder = train(dataset, configuration, fold, trainer=trainer, plans=plans, device=device,
                       continue_training=continue_training, epochs=epochs, iterations=iterations, maps=maps,
                       validate=not no_validation)
    except (MapsFolderError, PreprocessedError) as error:
        raise _Failed(str(error)) from None
    click.echo(f"trained: {folder}")


@nnunet.command("predict", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--from-modelfolder", is_flag=True,
              help="Run nnUNetv2_predict_from_modelfolder (-m MODEL_FOLDER) instead of nnUNetv2_predict.")
@click.pass_context
def predict_command(ctx, from_modelfolder):
    """nnU-Net's own nnUNetv2_predict (all its options), able to find the rwmaps trainers.

    Example: rwmaps nnunet predict -i imagesTs -o out -d 1 -c 3d_fullres -f 0 -tr nnUNetTrainerRW
    """
    _require()
    from .train import predict_env

    fn, name = (("predict_entry_point_modelfolder", "nnUNetv2_predict_from_modelfolder") if from_modelfolder
                else ("predict_entry_point", "nnUNetv2_predict"))
    result = subprocess.run([sys.executable, "-c", _PREDICT.format(fn=fn, name=name), *ctx.args], env=predict_env())
    ctx.exit(result.returncode)


@nnunet.command("trainer-path")
def trainer_path_command():
    """Print the folder for nnUNet_extTrainer, so that nnU-Net's own commands find the rwmaps trainers:

    export nnUNet_extTrainer=$(rwmaps nnunet trainer-path)
    """
    from pathlib import Path

    click.echo(str(Path(__file__).resolve().parent / "ext"))
