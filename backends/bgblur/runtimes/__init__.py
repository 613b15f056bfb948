"""Segmentation runtimes: one interface, the fastest backend each machine has."""
