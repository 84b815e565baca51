"""An out-of-tree zsqbench plugin: a new dataset (Fashion-MNIST's T-shirts, trousers, sneakers and bags at their own
28x28, relabelled 0..3) and a teacher of its own trained on it (``tinycnn@fmnist4``, weights shipped as package
data). It uses nothing but zsqbench's public plugin API."""
