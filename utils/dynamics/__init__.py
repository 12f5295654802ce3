"""Notebook 05: how weight spectra move during training.

* :mod:`.recorder`: :class:`SpectralRecorder` for any PyTorch loop, and recording a folder of checkpoints.
* :mod:`.store`: the HDF5 store (per-run files, merge in the seed's layout, verify, read).
* :mod:`.tiny_gpt`: a small byte-level GPT-2 trained on offline text.
* :mod:`.tables`: first-vs-last and loss tables.
"""
