"""Export a Keras model to deployable formats and prove each file against it.

`formats.FORMATS` is the one table of formats; `formats.export` dispatches on
it. `litert.LiteRTRunner` runs a `.tflite` the way an app does;
`parity.compare` measures an exported file's outputs against the Keras model's.
Conversion needs TensorFlow: call these in a `KERAS_BACKEND=tensorflow` process.
"""

from kdl.export.formats import FORMATS, ExportError, Format, export, float32_model, load_runner
from kdl.export.litert import LiteRTRunner
from kdl.export.parity import ParityError, compare

__all__ = ["FORMATS", "ExportError", "Format", "LiteRTRunner", "ParityError", "compare",
           "export", "float32_model", "load_runner"]
