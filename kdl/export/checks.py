"""Checks on exported files before anything runs or ships them."""

from __future__ import annotations

from pathlib import Path

TFLITE_IDENTIFIER = b"TFL3"


class InvalidModelFileError(ValueError):
    """An exported model file is missing, corrupt, truncated or of the wrong kind."""


def read_tflite(path: str | Path, *, allocate: bool = True) -> bytes:
    """Reads a `.tflite` file and proves it loads.

    Checks that the file exists, carries the TFLite flatbuffer identifier
    `TFL3` at byte 4, and (with `allocate`) that the LiteRT interpreter builds
    it and allocates its tensors.

    Args:
        path: the `.tflite` file.
        allocate: also build a LiteRT interpreter and allocate tensors.

    Returns:
        The file's bytes.

    Raises:
        InvalidModelFileError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidModelFileError(f"{path}: no such TFLite file. Run the export stage first.")
    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        raise InvalidModelFileError(
            f"{path}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} flatbuffer identifier "
            f"at byte 4; {len(content)} bytes). The file is corrupt or truncated: re-export it."
        )
    if allocate:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("reading .tflite files needs `pip install ai-edge-litert`") from e
        try:
            Interpreter(model_content=content).allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InvalidModelFileError(
                f"{path}: the LiteRT interpreter cannot load it ({str(e).strip()}). "
                "The file is corrupt or truncated: re-export it."
            ) from None
    return content
