"""Generated protobuf modules for chargectl.v1 (do not edit)."""
