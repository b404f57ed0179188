"""Training and evaluating language models on the Shakespeare corpus: `tnn train` (a TNN, or the GPT-2 baseline it
is compared with) and `tnn eval` (bits per byte, parallel against recurrent). Not needed to serve: the `[train]`
extra brings the corpus. The model itself and its conversion maths are `tnn.model`."""
