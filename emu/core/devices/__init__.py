"""One file per device model."""
