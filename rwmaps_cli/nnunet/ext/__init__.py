"""A folder for nnU-Net's ``nnUNet_extTrainer`` variable: it makes nnU-Net's own commands
(``nnUNetv2_predict``, ``nnUNetv2_predict_from_modelfolder``, ``nnUNetv2_train``) find the
rwmaps trainers by name.  ``rwmaps nnunet trainer-path`` prints this folder."""
