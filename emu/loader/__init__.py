"""Turning user input (multiboot images, assembly sources) into bytes placed in guest RAM."""
