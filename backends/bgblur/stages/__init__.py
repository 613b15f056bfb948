"""Pipeline stages built from the ops: buffers and stream held per instance, no Triton."""
