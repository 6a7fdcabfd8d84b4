"""The toy world: procedural scenes with exact ground truth and the bundled toy CLIP model.

scenes.py generates scenes, export.py writes them as a dataset folder, train.py trains the
toy model (shipped as autolabel/assets/toy/), readout.py and quality.py score it and the
methods that run on it.
"""

# The toy model's input size and the default scene size (here so the CLI reads it without numpy).
DEFAULT_SIZE = 128
# The bundled toy model's name wherever a backbone is named (--model toy); light to import.
TOY_NAME = "toy"
