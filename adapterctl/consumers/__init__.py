"""What each consumer (ComfyUI, A1111, Forge, diffusers, peft, kohya sd-scripts) really loads:
profiles as data (``data/*.json``), each learned from the consumer's own loading code and
citing the file and version it describes. See profile.py for the model."""
