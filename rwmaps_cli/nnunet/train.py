"""Build and run an RW trainer through nnU-Net's Python API, as ``nnUNetv2_train`` does.

``nnUNetv2_train -tr NAME`` only finds trainer classes inside nnU-Net's package (or under
``nnUNet_extTrainer``), so :func:`train` does what ``nnunetv2/run/run_training.py`` does
(``get_trainer_from_args``, ``maybe_load_checkpoint``, ``run_training``) with our classes.

nnU-Net's augmentation runs in worker processes (``nnUNet_n_proc_DA`` of them; 0 runs it
in the main process).  A script that calls :func:`train` must guard its entry point
(``if __name__ == "__main__":``) or each worker re-runs it.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from . import EXTRA_HINT


class NnUNetMissing(ImportError):
    """nnU-Net (the ``nnunet`` extra) is not installed."""


def require_nnunet() -> None:
    """Raise :class:`NnUNetMissing` (one line naming the extra) when nnunetv2 cannot be imported."""
    try:
        import nnunetv2  # noqa: F401
        import torch  # noqa: F401
    except ImportError as error:
        raise NnUNetMissing(f"{EXTRA_HINT} ({error})") from None


def build_trainer(dataset: str | int, configuration: str, fold: int | str, trainer: str = "nnUNetTrainerRW",
                  plans: str = "nnUNetPlans", device: str = "cpu", continue_training: bool = False,
                  epochs: int | None = None, iterations: int | None = None, maps: str | Path | None = None,
                  val_iterations: int | None = None):
    """Construct a trainer as ``get_trainer_from_args`` does, and load its checkpoint to continue.

    Parameters
    ----------
    dataset : ``DatasetXXX_Name`` or its id
    configuration : ``3d_fullres``, ``2d``, ...
    fold : 0-4 or ``"all"``
    trainer : class name (one of ``rwmaps_cli.nnunet.trainers.TRAINERS`` or any trainer nnU-Net finds)
    plans : plans identifier (``-p``)
    device : ``cpu``, ``cuda`` or ``mps``
    continue_training : continue from the latest checkpoint (``--c``)
    epochs, iterations : override ``num_epochs`` and ``num_iterations_per_epoch`` (short runs)
    maps : the maps folder; default the sibling ``<preprocessed folder>_rwmaps``
    val_iterations : override ``num_val_iterations_per_epoch``; with ``iterations`` set and
        this not, ``max(1, iterations // 5)``

    Returns
    -------
    the trainer, not yet run
    """
    require_nnunet()
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from .trainers import trainer_class

    if device not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda or mps, got {device!r}")
    if device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device == "cuda":
        torch.set_num_threads(1)
    if isinstance(fold, str) and fold != "all":
        fold = int(fold)
    if isinstance(dataset, str) and not dataset.startswith("Dataset"):
        dataset = int(dataset)
    cls = trainer_class(trainer)
    base = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans_dict = load_json(join(base, plans + ".json"))
    plans_dict["continue_training"] = continue_training  # nnU-Net 2.8 pops it in __init__
    dataset_json = load_json(join(base, "dataset.json"))
    if getattr(cls, "rw_maps", None) is not None and not getattr(cls, "rw_on_the_fly", True):
        _check_maps_early(Path(base), plans_dict, configuration, maps)
    instance = cls(plans=plans_dict, configuration=configuration, fold=fold, dataset_json=dataset_json,
                   device=torch.device(device))
    if maps is not None:
        instance.rw_maps_folder = str(maps)
    if epochs is not None:
        instance.num_epochs = int(epochs)
    if iterations is not None:
        instance.num_iterations_per_epoch = int(iterations)
        instance.num_val_iterations_per_epoch = max(1, int(iterations) // 5)
    if val_iterations is not None:
        instance.num_val_iterations_per_epoch = int(val_iterations)
    maybe_load_checkpoint(instance, continue_training, False, None)
    return instance


def _check_maps_early(base: Path, plans: dict, configuration: str, maps) -> None:
    """Read the maps manifest before nnU-Net builds anything, so a missing one is a one-line error."""
    from ..inputs.nnunet_preprocessed import maps_folder_beside, resolve_configuration
    from .store import read_maps_folder
    from .trainers import MAPS_ENV

    if maps is None and os.environ.get(MAPS_ENV):
        maps = os.environ[MAPS_ENV]
    if maps is None:
        identifier = resolve_configuration(plans.get("configurations", {}), configuration).get("data_identifier")
        if identifier is None:
            return  # an unknown configuration: nnU-Net says so itself
        maps = maps_folder_beside(base / identifier)
    read_maps_folder(maps)


def train(dataset: str | int, configuration: str, fold: int | str, trainer: str = "nnUNetTrainerRW",
          plans: str = "nnUNetPlans", device: str = "cpu", continue_training: bool = False,
          epochs: int | None = None, iterations: int | None = None, maps: str | Path | None = None,
          validate: bool = True, val_iterations: int | None = None):
    """Train an nnU-Net model with an RW trainer, then (by default) run nnU-Net's final validation.

    Parameters are those of :func:`build_trainer`; ``validate=False`` skips the final
    validation (predicting the fold's validation cases).  Needs the ``nnU-Net_raw``,
    ``nnUNet_preprocessed`` and ``nnUNet_results`` variables as nnU-Net does.

    Returns
    -------
    Path of the fold's output folder (with ``checkpoint_final.pth``).
    """
    instance = build_trainer(dataset, configuration, fold, trainer, plans, device, continue_training, epochs,
                             iterations, maps, val_iterations)
    instance.run_training()
    if validate:
        instance.perform_actual_validation(False)
    return Path(instance.output_folder)


def predict_env() -> dict:
    """Environment for nnU-Net's own predict commands to find the rwmaps trainers."""
    from .trainers import ext_trainer_path

    env = dict(os.environ)
    paths = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ext_trainer_path() not in paths:
        paths.append(ext_trainer_path())
    env["nnUNet_extTrainer"] = os.pathsep.join(paths)
    return env
