"""What the Triton Python-backend adapters share: tensor I/O, grouping, error mapping."""
