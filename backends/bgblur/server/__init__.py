"""The serving process around Triton: the HTTP guard in front of it and its request checks."""
