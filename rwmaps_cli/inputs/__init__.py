"""Where a run's cases come from: a folder of label files, or nnU-Net's preprocessed folder.

``dataset`` finds the cases (the label files, where their maps go, the class list of a
``dataset.json``); ``nnunet_preprocessed`` understands nnU-Net's preprocessed folder (its
plans, cases, classes, and where its maps go).  Files themselves are read by
``rwmaps_cli.formats``; this package only decides which files are cases.  Importing it
loads nothing.
"""
